"""Publishing run tasks after commit, and one wake-up message per burst of single predictions.

The database row is the source of truth; a message only wakes a worker to claim queued rows. A
broker failure is logged, never raised: the rows stay queued and the sweeper publishes them again.

Wake-up coalescing (docs/architecture.md, The wake-up protocol). A worker's run task claims other
queued rows besides its own (services.worker), so under load most per-request messages found their
row already run by another task. A submission therefore publishes only when no wake-up is pending;
a Redis key marks one as pending:

- the web, after its INSERT committed, sets the key if it is absent (SET NX, expiring after
  WAKEUP_COALESCE_MS) and publishes only if it set it;
- a run task that claims other rows deletes the key *before* its first claim, and claims other
  rows at least once before it returns.

So a submission that finds the key set committed its row before the pending task's claim, which
will take it; one that finds it gone publishes. Redis down at submit: the web publishes. A task
that reaches CLAIM_LOOP_SECONDS with rows still queued sends a wake-up before it returns. Web and
worker must share REDIS_URL and CELERY_QUEUE (the key is per model queue). Two fault paths leave rows to
the sweeper (SWEEP_QUEUED_AFTER), as a lost message does: a worker that cannot delete the key
(Redis failing between the web's SET and the worker's DELETE: rows submitted until the key
expires), and a publish that fails after setting it (the key is deleted then; rows submitted
while the publish was being tried).

The interactive mark. A single submission also sets a second key (same round trip), which says a
single text was queued since a worker last looked. A worker busy with a bulk pass deletes it between
two encoder layers and, if it was there, claims the queued interactive rows at once
(`interactive_queued_take`; services.worker). Same order as above: set after the commit, deleted
before the claim. Its loss (Redis down, expiry) only delays a text to the end of the pass under way.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence

from celery import current_app
from django.conf import settings
from django.utils import timezone

from predictions.memos import memo
from predictions.models import Prediction, PredictionStatus
from predictions.pubsub import redis_client

logger = logging.getLogger(__name__)

RUN_TASK = "predictions.run"  # predictions.tasks.predictions_run_task, sent by name: tasks import services
SHADOW_TASK = "predictions.shadow"  # predictions.tasks.predictions_shadow_task
# How long a published shadow wake-up counts as pending. Longer than a run task's: shadow workers
# run at the lowest CPU priority and may leave their message waiting while live work takes the cores.
SHADOW_WAKEUP_PENDING_MS = 60_000


def model_queue(model_name: str) -> str:
    """The queue of a model's run tasks: a worker consumes those of the models it serves (WORKER_MODELS),
    besides CELERY_QUEUE itself (beat's tasks; messages sent before queues were per model)."""
    return f"{settings.CELERY_TASK_DEFAULT_QUEUE}.{model_name}"


def shadow_queue() -> str:
    """The queue of shadow tasks, consumed by shadow workers only (WORKER_ROLE=shadow)."""
    return f"{settings.CELERY_TASK_DEFAULT_QUEUE}.shadow"


def _run_task_send(ids: Sequence[int], model_name: str, *, task_id: str | None = None) -> None:
    current_app.tasks[RUN_TASK].apply_async(
        args=[list(ids)], task_id=task_id, queue=model_queue(model_name), timeout=settings.BROKER_PUBLISH_TIMEOUT
    )


def prediction_publish(prediction: Prediction) -> None:
    """Send the run task for one row under the task id its INSERT recorded, unless a pending wake-up's
    claim will take the row; on a broker failure the row is marked unpublished, for the sweeper.
    Either way, a busy worker's bulk pass is told a single text waits (`interactive_queued_take`)."""
    if not wakeup_needed(prediction.model_name, interactive=True):
        return
    try:
        _run_task_send([prediction.pk], prediction.model_name, task_id=prediction.task_id)
    except Exception as exc:
        logger.error("could not publish prediction %d (%s): %s", prediction.pk, type(exc).__name__, exc)
        wakeup_taken([prediction.model_name])  # nothing is pending after all: the next submission publishes
        Prediction.objects.filter(pk=prediction.pk, status=PredictionStatus.QUEUED).update(published_at=None)
        prediction.published_at = None


def predictions_publish(prediction_ids: Sequence[int]) -> None:
    """Send the run task for these queued rows in chunks of PUBLISH_CHUNK_ROWS, each to its model's queue
    (the sweeper, reprocess).

    Each chunk's rows are marked with its task id and publish time first (committed), then the
    message is sent.
    """
    by_model: dict[str, list[int]] = {}
    for pk, model_name in (
        Prediction.objects.filter(pk__in=list(prediction_ids)).order_by("pk").values_list("pk", "model_name")
    ):
        by_model.setdefault(model_name, []).append(pk)
    chunk = settings.PUBLISH_CHUNK_ROWS
    sends = []
    for model_name, ids_of_model in by_model.items():
        for start in range(0, len(ids_of_model), chunk):
            task_id, ids = str(uuid.uuid4()), ids_of_model[start : start + chunk]
            Prediction.objects.filter(pk__in=ids, status=PredictionStatus.QUEUED).update(
                task_id=task_id, published_at=timezone.now()
            )
            sends.append((task_id, ids, model_name))
    chunks_send(sends)


def chunks_send(sends: Sequence[tuple[str, list[int], str]]) -> None:
    """Publish one run task per (task id, row ids, model) to the model's queue. On a broker failure,
    that chunk's and the later chunks' rows are marked unpublished, for the sweeper."""
    for i, (task_id, ids, model_name) in enumerate(sends):
        try:
            _run_task_send(ids, model_name, task_id=task_id)
        except Exception as exc:  # broker down: these and the remaining rows wait for the sweeper
            unsent = [tid for tid, _, _ in sends[i:]]
            logger.error(
                "could not publish %d prediction(s) (%s): %s",
                sum(len(ids) for _, ids, _ in sends[i:]),
                type(exc).__name__,
                exc,
            )
            Prediction.objects.filter(task_id__in=unsent, status=PredictionStatus.QUEUED).update(published_at=None)
            return


def wakeup_send(model_name: str) -> None:
    """A run task with no rows of its own, on a model's queue: it claims whatever is queued (a task
    that stops at CLAIM_LOOP_SECONDS while rows are still queued sends one per model it serves)."""
    try:
        _run_task_send([], model_name)
    except Exception as exc:  # the sweeper sends the rows left queued
        logger.error("could not publish a wake-up (%s): %s", type(exc).__name__, exc)


def _wakeup_key(queue: str) -> str:
    return f"mlsite:wakeup-pending:{queue}"


def _interactive_key(queue: str) -> str:
    return f"mlsite:interactive-queued:{queue}"


# How long an interactive mark lasts if no worker takes it (none is busy with bulk passes); a worker
# that finds a stale one only claims once for nothing.
INTERACTIVE_MARK_MS = 60_000


def _pending_set(queue: str, *, ms: int, interactive: bool = False) -> bool:
    """Mark a wake-up pending on `queue` for `ms`; True if none was (the caller publishes one). With
    `interactive`, in the same round trip, mark that a single text was queued (`interactive_queued_take`)."""
    client = redis_client()
    if client is None or (ms == 0 and not interactive):
        return True
    try:
        pipe = client.pipeline(transaction=False)
        if interactive:
            pipe.set(_interactive_key(queue), b"1", px=INTERACTIVE_MARK_MS)
        if ms:
            pipe.set(_wakeup_key(queue), b"1", nx=True, px=ms)
        replies = pipe.execute()
        return not ms or bool(replies[-1])
    except Exception as exc:  # Redis cannot say: publish, as without coalescing
        logger.warning("wake-up coalescing unavailable (%s): %s", type(exc).__name__, exc)
        return True


def _pending_clear(queues: Sequence[str]) -> None:
    client = redis_client()
    if client is None or not queues:  # cleared whatever this process's WAKEUP_COALESCE_MS: the web's may differ
        return
    try:
        client.delete(*(_wakeup_key(queue) for queue in queues))
    except Exception as exc:  # the key expires
        logger.warning("could not clear the pending wake-up (%s): %s", type(exc).__name__, exc)


def wakeup_needed(model_name: str, *, interactive: bool = False) -> bool:
    """True when this submission must publish its own message (and the key now says one is
    pending on its model's queue); False when a pending wake-up's claim will take its row.
    `interactive`: the submission is a single text, marked for `interactive_queued_take`."""
    return _pending_set(model_queue(model_name), ms=settings.WAKEUP_COALESCE_MS, interactive=interactive)


_mark_unreadable_until = [0.0]  # time.monotonic() before which the interactive mark is not read
MARK_RETRY_SECONDS = 5.0


@memo
def _mark_unreadable_forget() -> None:
    _mark_unreadable_until[0] = 0.0


def interactive_queued_take(model_names: Sequence[str]) -> bool:
    """Whether a single text of these models was submitted since the last call (any process's), clearing
    the mark: one Redis round trip, cheap enough between two encoder layers. The web marks after its
    INSERT committed, and this clears before the caller claims, so the claim sees every row marked.

    False without Redis, and for MARK_RETRY_SECONDS after Redis failed: the worker then takes single
    texts between passes only (services.worker)."""
    client = redis_client()
    if client is None or not model_names or time.monotonic() < _mark_unreadable_until[0]:
        return False
    try:
        return bool(client.delete(*(_interactive_key(model_queue(name)) for name in model_names)))
    except Exception as exc:
        logger.warning("could not read the interactive mark (%s): %s", type(exc).__name__, exc)
        _mark_unreadable_until[0] = time.monotonic() + MARK_RETRY_SECONDS
        return False


def wakeup_taken(model_names: Sequence[str]) -> None:
    """A run task is about to claim other queued rows of these models: submissions for them from now
    on publish again. Also called when the publish that set a key failed."""
    _pending_clear([model_queue(name) for name in model_names])


def shadow_wakeup_send() -> None:
    """Wake a shadow worker to answer the queued shadow answers, unless a wake-up is pending already
    (the shadow task clears the mark before it claims). On a broker failure the sweeper sends one.

    Not with CELERY_TASK_ALWAYS_EAGER (debugging, no worker): the shadow task would run inside the
    live task that queued its answers, waiting for that task's own rows to finish. The answers stay
    queued for a shadow worker, or for `services.shadow.shadow_run`."""
    if current_app.conf.task_always_eager or not _pending_set(shadow_queue(), ms=SHADOW_WAKEUP_PENDING_MS):
        return
    try:
        current_app.tasks[SHADOW_TASK].apply_async(queue=shadow_queue(), timeout=settings.BROKER_PUBLISH_TIMEOUT)
    except Exception as exc:
        logger.error("could not publish a shadow wake-up (%s): %s", type(exc).__name__, exc)
        _pending_clear([shadow_queue()])


def shadow_wakeup_taken() -> None:
    """A shadow task is about to claim: work queued from now on sends a wake-up again."""
    _pending_clear([shadow_queue()])
