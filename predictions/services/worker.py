"""The worker's side: claim queued rows, run the model on them in one forward pass, write the results,
and sweep up work whose message or worker was lost (docs/architecture.md)."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, cast

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone

from predictions.cache import CACHED_FIELDS, result_cache_set_many
from predictions.memos import memo
from predictions.models import Lane, Prediction, PredictionStatus
from predictions.monitoring import forward_pass_observe, prediction_finished_observe
from predictions.notify import predictions_finished_notify
from predictions.registry import classifier_get, served_models
from predictions.services.dispatch import interactive_queued_take, predictions_publish, wakeup_send, wakeup_taken
from predictions.services.shadow import shadow_sample
from predictions.services.sql import results_store, rows_claim
from predictions.services.waiting import finished_fields
from textclf import LabelScores, ModelLoadError

if TYPE_CHECKING:
    from textclf.serving.classifier import TextClassifier

logger = logging.getLogger(__name__)


def predictions_claim(
    own_ids: Sequence[int],
    *,
    task_id: str,
    limit: int,
    others: bool,
    reclaim: bool = False,
    interactive_only: bool = False,
) -> list[Prediction]:
    """Mark rows as running under `task_id` and return them: interactive first, then by lane and turn.

    First come, with `reclaim`, rows this task already held (an earlier delivery of this message whose
    worker died), then queued interactive rows, up to `limit`; then bulk and background rows up to
    CLAIM_BULK_ROWS (and `limit` in all), BACKGROUND_SHARE percent of them kept for background rows.
    Without `others`, only this task's own rows; with it, anyone's: that is how texts from many
    requests share one forward pass, and how rows whose message waits behind others in the broker
    get run (services.sql.rows_claim). Rows already started MAX_ATTEMPTS times are failed instead of
    being run again. With `interactive_only`, queued interactive rows alone (what a worker takes
    between the forward passes of a bulk claim).
    """
    now = timezone.now()
    slice_rows = 0 if interactive_only else settings.CLAIM_BULK_ROWS
    rows = rows_claim(
        list(own_ids),
        task_id=task_id,
        limit=limit,
        slice_rows=slice_rows,
        background_rows=math.ceil(slice_rows * settings.BACKGROUND_SHARE / 100),
        models=sorted(settings.WORKER_MODELS),
        others=others,
        reclaim=reclaim,
        now=now,
    )
    given_up = [row.pk for row in rows if row.attempts > settings.MAX_ATTEMPTS]
    if given_up:
        Prediction.objects.filter(pk__in=given_up, status=PredictionStatus.RUNNING, task_id=task_id).update(
            status=PredictionStatus.FAILED,
            finished_at=now,
            error=f"gave up after {settings.MAX_ATTEMPTS} attempts: the worker stopped each time it ran this text",
        )
        predictions_finished_notify(given_up, [row.batch_id for row in rows if row.pk in given_up and row.batch_id])
        rows = [row for row in rows if row.attempts <= settings.MAX_ATTEMPTS]
    return rows


_last_pass = {"at": 0.0, "rows": 0}  # this process's previous claim
_interactive_ran = {"at": -math.inf}  # when this process last ran an interactive text
MIXED_SECONDS = 1.0  # interactive texts are flowing if this process ran one this recently


@memo
def _last_pass_forget() -> None:
    _last_pass.update(at=0.0, rows=0)
    _interactive_ran.update(at=-math.inf)


def bulk_pass_size() -> int:
    """Texts in the next forward pass of bulk or background rows that do not yield between layers:
    PASS_MAX_TEXTS_MIXED while interactive texts are flowing, since each waits for the pass under
    way; PASS_MAX_TEXTS otherwise."""
    mixed = settings.PASS_MAX_TEXTS_MIXED
    if mixed and time.monotonic() - _interactive_ran["at"] < MIXED_SECONDS:
        return min(mixed, settings.PASS_MAX_TEXTS)
    return settings.PASS_MAX_TEXTS


def _company_expected(rows: list[Prediction]) -> bool:
    """Whether waiting CLAIM_WAIT_MS is likely to fill the batch: other rows came with this claim,
    or with this process's previous one a moment ago. A lone request on an idle service does not wait."""
    return len(rows) > 1 or (_last_pass["rows"] > 1 and time.monotonic() - _last_pass["at"] < 1.0)


def predictions_run(
    prediction_ids: Iterable[int], *, task_id: str = "", others: bool = True, limit: int | None = None
) -> dict[str, int]:
    """Run the model on the unfinished rows among these ids (and, with `others`, on other queued rows).

    Finished rows are skipped (idempotent). Own rows are claimed until none is left; other rows are
    claimed while any are queued, for at most CLAIM_LOOP_SECONDS, so a busy worker keeps its batches
    full. If a forward pass fails, its texts are retried one by one so a bad text fails only its row;
    rows that were started before (their worker died) run one by one, each written as it finishes.
    """
    own_ids = list(prediction_ids)
    own_set = set(own_ids)
    limit = limit or settings.CLAIM_MAX_ROWS
    counts = {"succeeded": 0, "failed": 0, "skipped": 0, "batches": 0}
    done: set[int] = set()
    deadline = time.monotonic() + settings.CLAIM_LOOP_SECONDS
    first = True
    # A task whose own rows fill a forward pass (a chunk of an API batch) does not wait for company.
    fill = others and len(own_ids) < settings.PASS_MAX_TEXTS

    def interactive_run() -> None:
        """Between two forward passes of bulk or background rows: claim and run the interactive texts
        queued meanwhile, so a single text waits for one pass, not for the rest of the claim."""
        taken = predictions_claim([], task_id=task_id, limit=limit, others=True, interactive_only=True)
        done.update(r.pk for r in taken)
        _claimed_run(taken, task_id=task_id, counts=counts, between=None)

    def interactive_run_if_marked() -> None:
        """Between two encoder layers of such a pass: the same, if a single text was submitted since
        the last look (a Redis mark; without it, single texts wait for the pass's end)."""
        if interactive_queued_take(served_models()):
            interactive_run()

    if others:  # before any claim: submissions from now on publish again (services.dispatch)
        wakeup_taken(served_models())
    while True:
        remaining = [pk for pk in own_ids if pk not in done]
        rows = predictions_claim(remaining, task_id=task_id, limit=limit, others=others, reclaim=first)
        if first and fill and len(rows) < limit and settings.CLAIM_WAIT_MS > 0 and _company_expected(rows):
            time.sleep(settings.CLAIM_WAIT_MS / 1000)  # let concurrent requests join this forward pass
            rows += predictions_claim([], task_id=task_id, limit=limit - len(rows), others=True)
        first = False
        if not rows:
            break
        _last_pass.update(at=time.monotonic(), rows=len(rows))  # the last pass that ran (not the empty claim)
        done.update(r.pk for r in rows)
        _claimed_run(
            rows,
            task_id=task_id,
            counts=counts,
            between=interactive_run if others else None,
            between_layers=interactive_run_if_marked if others and settings.PASS_YIELD_LAYERS else None,
        )
        # Own rows may still wait if this claim was full of them; if it took none, the rest are not
        # claimable here (finished, given up, or held by another worker).
        own_left = any(r.pk in own_set for r in rows) and any(pk not in done for pk in own_ids)
        if not own_left and (not others or time.monotonic() > deadline):
            if others:  # rows may still be queued whose submissions counted on this task
                for model_name in served_models():
                    wakeup_send(model_name)
            break
    counts["skipped"] += len(set(own_ids) - done)
    return counts


def _claimed_run(
    rows: list[Prediction],
    *,
    task_id: str,
    counts: dict[str, int],
    between: Callable[[], None] | None,
    between_layers: Callable[[], None] | None = None,
) -> None:
    """Run claimed rows lane by lane (the claim returns them in lane order, so an interactive text is
    in the first pass), by model; rows started before (their worker died) one by one. `between` runs
    between the forward passes of bulk and background rows, `between_layers` between the encoder
    layers of each of those passes."""
    by_model: dict[tuple[int, str], list[Prediction]] = defaultdict(list)
    for prediction in rows:
        by_model[(prediction.lane, prediction.model_name)].append(prediction)
    for (lane, model_name), group in by_model.items():
        retried = [r for r in group if r.attempts > 1]
        fresh = [r for r in group if r.attempts <= 1]
        if lane == Lane.INTERACTIVE:
            _interactive_ran["at"] = time.monotonic()
        for batch in ([fresh] if fresh else []) + [[r] for r in retried]:
            counts["batches"] += 1
            bulk = lane != Lane.INTERACTIVE
            for key, value in _rows_run(
                model_name,
                batch,
                task_id=task_id,
                between=between if bulk else None,
                between_layers=between_layers if bulk else None,
            ).items():
                counts[key] += value


def _rows_run(
    model_name: str,
    rows: list[Prediction],
    *,
    task_id: str,
    between: Callable[[], None] | None = None,
    between_layers: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Run the model on these rows, PASS_MAX_TEXTS (and PASS_MAX_TOKENS) at a time, and write them all
    in one statement. If a pass fails, its texts are retried one by one, so a bad text fails only its
    own row. `between`, if given, runs after every pass but the last, and the passes are sized by
    `bulk_pass_size` (docs/architecture.md, Lanes). `between_layers`, if given, runs between the
    encoder layers of each pass (packed passes only); an error it raises is raised once the pass is
    done, as `between`'s would be, not taken for the pass's own failure."""
    try:
        classifier = classifier_get(model_name)
    except (ModelLoadError, KeyError) as exc:
        unloaded = ModelLoadError(f"model {model_name!r} could not be loaded: {exc}")
        return _results_write(model_name, "", rows, [unloaded] * len(rows), task_id=task_id)
    texts = [row.text for row in rows]
    results: list[LabelScores | Exception | None] = [None] * len(rows)
    seconds = cpu_seconds = 0.0
    # Passes that yield to single texts between their layers keep their size; others shrink while
    # single texts flow (bulk_pass_size), since each waits for the whole pass under way.
    yields = between_layers is not None and classifier.yields_between_layers
    size = bulk_pass_size if between is not None and not yields else settings.PASS_MAX_TEXTS
    inside = _WorkInsidePasses(between_layers) if between_layers is not None else None
    passes = classifier.passes(
        texts,
        batch_size=size,
        max_tokens=settings.PASS_MAX_TOKENS,
        between_layers=inside,
    )
    answered, failed = 0, False
    while True:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            step = next(passes, None)
        except SoftTimeLimitExceeded:
            raise  # out of time: the rows stay running and go back to the queue (sweeper), not one by one
        except Exception as exc:
            # The exception's message may quote a text: the traceback goes to DEBUG only.
            logger.warning(
                "pass over %d text(s) failed for %s (%s); retrying texts one by one",
                len(rows) - answered,
                model_name,
                type(exc).__name__,
            )
            logger.debug("pass failed for %s", model_name, exc_info=True)
            for i, result in enumerate(results):  # the generator is spent: the texts not yet answered
                if result is None:
                    results[i] = _text_run(classifier, texts[i])
            failed = True
            break
        if step is None:
            break
        nested, nested_cpu = inside.seconds_take() if inside else (0.0, 0.0)
        seconds += time.perf_counter() - started - nested
        cpu_seconds += time.process_time() - cpu_started - nested_cpu
        for i, answer in zip(*step, strict=True):
            results[i] = answer
        answered += len(step[0])
        if inside is not None and inside.error is not None:
            raise inside.error  # after the pass, outside the try: as if `between` had raised it
        if between is not None and answered < len(rows):
            between()  # outside the try: its own errors are not a failed pass
    if not failed:
        forward_pass_observe(model_name, len(rows), seconds)
        logger.info(
            "forward pass of %d text(s) for %s in %.3fs",
            len(rows),
            model_name,
            seconds,
            extra={
                "model": model_name,
                "size": len(rows),
                "seconds": round(seconds, 4),
                "cpu_seconds": round(cpu_seconds, 4),  # this process's, all threads
                "prediction_ids": [row.pk for row in rows],
                # The requests whose texts shared this pass; the task's own request is `request_id`.
                "request_ids": sorted({row.request_id for row in rows if row.request_id}),
            },
        )
    return _results_write(model_name, classifier.version, rows, cast(list, results), task_id=task_id)


class _WorkInsidePasses:
    """`work`, run inside forward passes (between encoder layers). Its first error is kept, for the
    caller to raise after the pass (raised through the pass, it would be taken for the pass's own
    failure), and no more work is done after it. The time it takes is not the pass's."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.work = work
        self.error: Exception | None = None
        self._seconds = self._cpu_seconds = 0.0

    def __call__(self) -> None:
        if self.error is not None:
            return
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            self.work()
        except SoftTimeLimitExceeded:
            raise  # out of time: as for the pass itself
        except Exception as exc:
            self.error = exc
        finally:
            self._seconds += time.perf_counter() - started
            self._cpu_seconds += time.process_time() - cpu_started

    def seconds_take(self) -> tuple[float, float]:
        """Wall and CPU seconds spent in `work` since the last call."""
        spent = (self._seconds, self._cpu_seconds)
        self._seconds = self._cpu_seconds = 0.0
        return spent


def _text_run(classifier: TextClassifier, text: str) -> LabelScores | Exception:
    try:
        return classifier.predict([text])[0]
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        return exc


def _results_write(
    model_name: str, version: str, rows: list[Prediction], results: Sequence[LabelScores | Exception], *, task_id: str
) -> dict[str, int]:
    """Fill the cache, store each result (or exception) on its row, then wake waiting requests.

    The cache is filled first, so once a row reads as finished, the same text is a cache hit (a
    result is the model's answer to the text whichever row it was computed for).
    """
    finished = timezone.now()
    counts = {"succeeded": 0, "failed": 0, "skipped": 0}
    result_cache_set_many(
        {
            (model_name, version, row.text_sha256): {field: getattr(result, field) for field in CACHED_FIELDS}
            for row, result in zip(rows, results, strict=True)
            if not isinstance(result, Exception) and row.text_sha256
        }
    )
    for row, result in zip(rows, results, strict=True):
        _row_fill(row, result, version=version, finished=finished)
    held_ids = results_store(rows, task_id=task_id)
    for row in rows:
        if row.pk not in held_ids:
            counts["skipped"] += 1
            continue
        counts["succeeded" if row.status == PredictionStatus.SUCCEEDED else "failed"] += 1
        prediction_finished_observe(model_name, row.status, (finished - row.created_at).total_seconds())
    predictions_finished_notify(
        [row.pk for row in rows],
        [row.batch_id for row in rows if row.batch_id],
        # Fields only for single submissions: only POST /predictions/?wait waits for one row.
        {row.pk: finished_fields(row) for row in rows if row.pk in held_ids and not row.batch_id},
    )
    try:  # after the clients are told: their answers never wait for the shadow's bookkeeping
        shadow_sample([row for row in rows if row.pk in held_ids])
    except DatabaseError:  # the live results are written: a shadow sample is not worth failing them for
        logger.warning("could not queue shadow answers", exc_info=True)
    return counts


def _row_fill(row: Prediction, result: LabelScores | Exception, *, version: str, finished: datetime) -> None:
    """Set the result fields of a row from the model's answer, or from the exception its text raised."""
    row.model_version, row.finished_at = version, finished
    if isinstance(result, Exception):
        row.status, row.error = PredictionStatus.FAILED, f"{type(result).__name__}: {result}"[:2000]
        row.label, row.score, row.scores, row.labels, row.margin = "", None, None, None, None
    else:
        row.status, row.error = PredictionStatus.SUCCEEDED, ""
        row.label, row.score, row.scores, row.labels = result.label, result.score, result.scores, result.labels
        row.margin = result.margin


def predictions_sweep(*, queued_after: float, running_after: float) -> dict[str, int]:
    """Republish rows whose message may be lost; requeue rows whose worker may have died.

    Queued rows never published (broker down at submit) or published more than `queued_after`
    seconds ago are sent again; rows `running` for more than `running_after` seconds go back to
    queued first. Running a row twice is harmless: the task skips finished rows.
    """
    now = timezone.now()
    stuck = Prediction.objects.filter(
        status=PredictionStatus.RUNNING, started_at__lt=now - timedelta(seconds=running_after)
    )
    stuck_ids = list(stuck.values_list("pk", flat=True)[: settings.SWEEP_MAX_ROWS])
    requeued = stuck.filter(pk__in=stuck_ids).update(status=PredictionStatus.QUEUED)
    stale = Q(published_at__isnull=True, created_at__lt=now - timedelta(seconds=min(queued_after, 5))) | Q(
        published_at__lt=now - timedelta(seconds=queued_after)
    )
    stale_ids = Prediction.objects.filter(stale, status=PredictionStatus.QUEUED).values_list("pk", flat=True)
    ids = sorted(set(stale_ids[: settings.SWEEP_MAX_ROWS]) | set(stuck_ids))
    predictions_publish(ids)
    return {"requeued_running": requeued, "republished": len(ids)}
