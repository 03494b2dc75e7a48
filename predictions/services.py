"""How a prediction is made: the business logic that views, tasks and commands share.

Writes go through these functions only. Each state change is a conditional update on the row
(``filter(id=…, status=…).update(…)``), so a task delivered twice changes nothing the second time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from mlsite.logs import current_request_id
from predictions.cache import result_cache_get, result_cache_get_many, result_cache_set_many
from predictions.models import (
    FINISHED_STATUSES,
    Batch,
    IdempotencyKey,
    Prediction,
    PredictionResult,
    PredictionReview,
    PredictionStatus,
    ReprocessRun,
    model_output_fields,
    text_sha256,
)
from predictions.monitoring import forward_pass_observe, prediction_finished_observe
from predictions.notify import predictions_finished_notify
from predictions.registry import classifier_get, model_version
from predictions.selectors import idempotency_key_get, predictions_in_flight_count
from predictions.wakeup import wakeup_needed, wakeup_taken

logger = logging.getLogger(__name__)


CACHED_FIELDS = ("label", "score", "scores", "labels")  # what a cache entry holds


def _prediction_build(
    *, owner, text: str, digest: str, model_name: str, version: str, hit: dict | None, batch=None, position: int = 0
) -> Prediction:
    """An unsaved row: succeeded from the cache hit when the same model version answered this text before."""
    prediction = Prediction(
        owner=owner,
        batch=batch,
        position=position,
        text=text,
        text_sha256=digest,
        model_name=model_name,
        model_version=version,
        request_id=current_request_id() or "",
    )
    if hit is not None:
        now = timezone.now()
        prediction.status = PredictionStatus.SUCCEEDED
        prediction.cached = True
        prediction.started_at = prediction.finished_at = now
        for field in CACHED_FIELDS:
            setattr(prediction, field, hit.get(field))
    return prediction


@functools.cache
def _insert_statement() -> tuple[str, tuple]:
    """The INSERT Model.save() sends for a new Prediction, and the fields it takes, built once."""
    meta = Prediction._meta
    fields = tuple(f for f in meta.local_concrete_fields if f is not meta.auto_field)
    assert not any(f.generated or f.has_db_default() for f in fields), "save() would send these differently"
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({placeholders}) RETURNING {quote(meta.pk.column)}"
    return sql, fields


def _prediction_insert(prediction: Prediction) -> None:
    """prediction.save() of a new row: the same statement and values, built once instead of for each
    row, and sent with its values apart (server-side binding) so psycopg prepares it on a connection
    after a few uses instead of quoting every value into the SQL text. Under cache hits this was a
    sixth of the web's CPU (README, Throughput). No pre_save/post_save signal is sent: no receiver
    listens for Prediction (a test checks). Django's cursor wrapper stays around it (query logging,
    execute wrappers). On the embedded default (SQLite), save() itself."""
    if connection.vendor != "postgresql":
        prediction.save()
        return
    sql, fields = _insert_statement()
    values = [f.get_db_prep_save(f.pre_save(prediction, True), connection) for f in fields]
    connection.close_if_health_check_failed()  # as connection.cursor() does: replaces a connection the
    connection.ensure_connection()  # server closed (a restart) before this request's first statement
    raw = psycopg.Cursor(connection.connection)
    wrapped = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)
    with transaction.mark_for_rollback_on_error(connection.alias), wrapped as cursor:  # as save() does
        cursor.execute(sql, values)
        prediction.pk = cursor.fetchone()[0]
    prediction._state.adding, prediction._state.db = False, connection.alias


def prediction_create(*, owner, text: str, model_name: str) -> Prediction:
    """Save one prediction; queue it for a worker after commit unless the cache answered it.
    Raises QueueFull, storing nothing, when MAX_QUEUED predictions are already in flight."""
    queue_admit(adding=1)
    version = _version_or_blank(model_name)
    digest = text_sha256(text)
    hit = result_cache_get(model_name, version, digest) if version else None
    prediction = _prediction_build(
        owner=owner, text=text, digest=digest, model_name=model_name, version=version, hit=hit
    )
    if not prediction.cached:  # marked as published in the INSERT itself: no UPDATE after publishing
        prediction.task_id, prediction.published_at = str(uuid.uuid4()), timezone.now()
    _prediction_insert(prediction)  # in autocommit, on_commit runs at once, inside a transaction after it
    if not prediction.cached:
        transaction.on_commit(lambda: _prediction_publish(prediction))
    return prediction


def _prediction_publish(prediction: Prediction) -> None:
    """Send the run task for one row under the task id its INSERT recorded, unless a wake-up is
    already pending whose claim will take the row (predictions/wakeup.py); on a broker failure the
    row is marked unpublished, for the sweeper."""
    from predictions.tasks import predictions_run_task

    if not wakeup_needed():
        return
    try:
        predictions_run_task.apply_async(
            args=[[prediction.pk]], task_id=prediction.task_id, timeout=settings.BROKER_PUBLISH_TIMEOUT
        )
    except Exception as exc:
        logger.error("could not publish prediction %d (%s): %s", prediction.pk, type(exc).__name__, exc)
        wakeup_taken()  # nothing is pending after all: the next submission publishes
        Prediction.objects.filter(pk=prediction.pk, status=PredictionStatus.QUEUED).update(published_at=None)
        prediction.published_at = None


def batch_create(*, owner, texts: Sequence[str], model_name: str) -> Batch:
    """Save a batch and one prediction per text; uncached ones are queued in chunks after commit.
    Raises QueueFull, storing nothing, when the batch would take the queue over MAX_QUEUED.

    Each chunk's task id is chosen before the INSERT, which marks the rows as published: nothing is
    written after publishing, so a worker never finds its rows locked by that write (it skips
    locked rows) and a batch costs one INSERT whatever its number of chunks.
    """
    queue_admit(adding=len(texts))
    version = _version_or_blank(model_name)
    digests = [text_sha256(t) for t in texts]
    hits = result_cache_get_many(model_name, version, digests) if version else {}
    with transaction.atomic():
        batch = Batch.objects.create(owner=owner, model_name=model_name, size=len(texts))
        rows = [
            _prediction_build(
                owner=owner,
                text=text,
                digest=digests[i],
                model_name=model_name,
                version=version,
                batch=batch,
                position=i,
                hit=hits.get(digests[i]),
            )
            for i, text in enumerate(texts)
        ]
        queued = [row for row in rows if not row.cached]
        now = timezone.now()
        chunk = settings.BATCH_CHUNK_SIZE
        chunks = [(str(uuid.uuid4()), queued[start : start + chunk]) for start in range(0, len(queued), chunk)]
        for task_id, members in chunks:
            for row in members:
                row.task_id, row.published_at = task_id, now
        Prediction.objects.bulk_create(rows, batch_size=500)
        if chunks:
            sends = [(task_id, [row.pk for row in members]) for task_id, members in chunks]
            transaction.on_commit(lambda: _chunks_send(sends))
    return batch


def predictions_publish(prediction_ids: Sequence[int]) -> None:
    """Send the run task for these queued rows in chunks of BATCH_CHUNK_SIZE (the sweeper, reprocess).

    Each chunk's rows are marked with its task id and publish time first (committed), then the
    message is sent. A broker failure is logged, not raised: the rows stay queued in the database,
    which is the source of truth, and are published again by the sweeper.
    """
    chunk = settings.BATCH_CHUNK_SIZE
    sends = []
    for start in range(0, len(prediction_ids), chunk):
        task_id, ids = str(uuid.uuid4()), list(prediction_ids[start : start + chunk])
        Prediction.objects.filter(pk__in=ids, status=PredictionStatus.QUEUED).update(
            task_id=task_id, published_at=timezone.now()
        )
        sends.append((task_id, ids))
    _chunks_send(sends)


def _chunks_send(sends: Sequence[tuple[str, list[int]]]) -> None:
    """Publish one run task per (task id, row ids). On a broker failure, that chunk's and the later
    chunks' rows are marked unpublished, for the sweeper."""
    from predictions.tasks import predictions_run_task

    for i, (task_id, ids) in enumerate(sends):
        try:
            predictions_run_task.apply_async(args=[ids], task_id=task_id, timeout=settings.BROKER_PUBLISH_TIMEOUT)
        except Exception as exc:  # broker down: these and the remaining rows wait for the sweeper
            unsent = [tid for tid, _ in sends[i:]]
            logger.error(
                "could not publish %d prediction(s) (%s): %s",
                sum(len(ids) for _, ids in sends[i:]),
                type(exc).__name__,
                exc,
            )
            Prediction.objects.filter(task_id__in=unsent, status=PredictionStatus.QUEUED).update(published_at=None)
            return


# In the model's field order, as Model.from_db expects them.
CLAIMED_FIELDS = tuple(
    f.attname
    for f in Prediction._meta.concrete_fields
    if f.attname
    in {"id", "batch_id", "text", "text_sha256", "model_name", "attempts", "created_at", "started_at", "request_id"}
)


def predictions_claim(
    own_ids: Sequence[int], *, task_id: str, limit: int, others: bool, reclaim: bool = False
) -> list[Prediction]:
    """Mark up to `limit` rows as running under `task_id` and return them, oldest first.

    First come, with `reclaim`, rows this task already held (running under this task id: an earlier
    delivery of this message whose worker died), then its own queued rows, then, with `others`, queued
    rows of any other request: that is how texts from many requests share one forward pass, and how
    rows whose message waits behind others in the broker get run. One statement
    (UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING …) picks, marks and returns the
    rows, so two workers never claim the same row and a claim costs one round trip.
    Rows already started MAX_ATTEMPTS times are failed instead of being run again.
    """
    table = connection.ops.quote_name(Prediction._meta.db_table)
    held = "(status = %s AND task_id = %s)" if reclaim and task_id else "FALSE"
    held_params = [PredictionStatus.RUNNING.value, task_id] if reclaim and task_id else []
    own = list(own_ids)
    mine = f"(status = %s AND id IN ({', '.join(['%s'] * len(own))}))" if own else "FALSE"
    mine_params = [PredictionStatus.QUEUED.value, *own] if own else []
    anyone = "status = %s" if others else "FALSE"
    anyone_params = [PredictionStatus.QUEUED.value] if others else []
    lock = " FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
    sql = (
        f"UPDATE {table} SET status = %s, started_at = %s, attempts = attempts + 1, task_id = %s "
        f"WHERE id IN (SELECT id FROM {table} WHERE {held} OR {mine} OR {anyone} "
        f"ORDER BY CASE WHEN {held} THEN 0 WHEN {mine} THEN 1 ELSE 2 END, id LIMIT %s{lock}) "
        f"RETURNING {', '.join(CLAIMED_FIELDS)}"
    )
    now = timezone.now()
    params = [
        PredictionStatus.RUNNING.value,
        now,
        task_id,
        *held_params,
        *mine_params,
        *anyone_params,
        *held_params,
        *mine_params,
        limit,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = sorted(
            (
                Prediction.from_db(connection.alias, CLAIMED_FIELDS, [_db_value(v) for v in values])
                for values in cursor.fetchall()
            ),
            key=lambda row: row.pk,
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


def _db_value(value):
    """A raw cursor skips Django's converters: SQLite returns naive UTC datetimes (PostgreSQL, aware ones)."""
    if isinstance(value, datetime) and timezone.is_naive(value):
        return timezone.make_aware(value, UTC)
    return value


_last_pass = {"at": 0.0, "rows": 0}  # this process's previous claim


def _company_expected(rows: list[Prediction]) -> bool:
    """Whether waiting BATCH_MAX_WAIT_MS is likely to fill the batch: other rows came with this claim,
    or with this process's previous one a moment ago. A lone request on an idle service does not wait."""
    return len(rows) > 1 or (_last_pass["rows"] > 1 and time.monotonic() - _last_pass["at"] < 1.0)


def predictions_run(
    prediction_ids: Iterable[int], *, task_id: str = "", others: bool = True, limit: int | None = None
) -> dict[str, int]:
    """Run the model on the unfinished rows among these ids (and, with `others`, on other queued rows).

    Finished rows are skipped (idempotent). Own rows are claimed until none is left; other rows are
    claimed while any are queued, for at most BATCH_LOOP_SECONDS, so a busy worker keeps its batches
    full. If a forward pass fails, its texts are retried one by one so a bad text fails only its row;
    rows that were started before (their worker died) run one by one, each written as it finishes.
    """
    own_ids = list(prediction_ids)
    own_set = set(own_ids)
    limit = limit or settings.BATCH_MAX_SIZE
    counts = {"succeeded": 0, "failed": 0, "skipped": 0, "batches": 0}
    done: set[int] = set()
    deadline = time.monotonic() + settings.BATCH_LOOP_SECONDS
    first = True
    # A task whose own rows fill a forward pass (a chunk of an API batch) leaves other requests' rows
    # to their own tasks on its first claim, so that idle worker processes run them instead of
    # waiting while this one holds them; once its own rows are done, it takes other queued rows.
    fill = others and len(own_ids) < settings.INFERENCE_BATCH_SIZE
    if others:  # before any claim: submissions from now on publish again (predictions/wakeup.py)
        wakeup_taken()
    while True:
        remaining = [pk for pk in own_ids if pk not in done]
        with_others = others and (fill or not first)
        rows = predictions_claim(remaining, task_id=task_id, limit=limit, others=with_others, reclaim=first)
        if first and fill and len(rows) < limit and settings.BATCH_MAX_WAIT_MS > 0 and _company_expected(rows):
            time.sleep(settings.BATCH_MAX_WAIT_MS / 1000)  # let concurrent requests join this forward pass
            rows += predictions_claim([], task_id=task_id, limit=limit - len(rows), others=True)
        first = False
        if not rows:
            if others and not with_others:
                continue  # own rows all gone: one claim of other rows before returning, which the wake-up needs
            break
        _last_pass.update(at=time.monotonic(), rows=len(rows))  # the last pass that ran (not the empty claim)
        done.update(r.pk for r in rows)
        by_model: dict[str, list[Prediction]] = defaultdict(list)
        for prediction in rows:
            by_model[prediction.model_name].append(prediction)
        for model_name, group in by_model.items():
            retried = [r for r in group if r.attempts > 1]
            fresh = [r for r in group if r.attempts <= 1]
            for batch in ([fresh] if fresh else []) + [[r] for r in retried]:
                counts["batches"] += 1
                for key, value in _rows_run(model_name, batch, task_id=task_id).items():
                    counts[key] += value
        # Own rows may still wait if this claim was full of them; if it took none, the rest are not
        # claimable here (finished, given up, or held by another worker).
        own_left = any(r.pk in own_set for r in rows) and any(pk not in done for pk in own_ids)
        if not own_left and (not others or time.monotonic() > deadline):
            if others:  # rows may still be queued whose submissions counted on this task
                _wakeup_send()
            break
    counts["skipped"] += len(set(own_ids) - done)
    return counts


def _wakeup_send() -> None:
    """A run task with no rows of its own: it claims whatever is queued (a task that stops at
    BATCH_LOOP_SECONDS while rows are still queued sends one)."""
    from predictions.tasks import predictions_run_task

    try:
        predictions_run_task.apply_async(args=[[]], timeout=settings.BROKER_PUBLISH_TIMEOUT)
    except Exception as exc:  # the sweeper sends the rows left queued
        logger.error("could not publish a wake-up (%s): %s", type(exc).__name__, exc)


def _rows_run(model_name: str, rows: list[Prediction], *, task_id: str) -> dict[str, int]:
    from celery.exceptions import SoftTimeLimitExceeded

    from textclf import ModelLoadError

    try:
        classifier = classifier_get(model_name)
    except (ModelLoadError, KeyError) as exc:
        results = [ModelLoadError(f"model {model_name!r} could not be loaded: {exc}")] * len(rows)
        return _results_write(model_name, "", rows, results, task_id=task_id)
    texts = [row.text for row in rows]
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        results: list = classifier.predict(
            texts, batch_size=settings.INFERENCE_BATCH_SIZE, max_tokens=settings.BATCH_MAX_TOKENS
        )
    except SoftTimeLimitExceeded:
        raise  # out of time: the rows stay running and go back to the queue (sweeper), not one by one
    except Exception as exc:
        # The exception's message may quote a text: the traceback goes to DEBUG only.
        logger.warning(
            "batch of %d failed for %s (%s); retrying texts one by one", len(rows), model_name, type(exc).__name__
        )
        logger.debug("batch of %d failed for %s", len(rows), model_name, exc_info=True)
        results = []
        for text in texts:
            try:
                results.append(classifier.predict([text])[0])
            except SoftTimeLimitExceeded:
                raise
            except Exception as exc:
                results.append(exc)
    else:
        seconds = time.perf_counter() - started
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
                "cpu_seconds": round(time.process_time() - cpu_started, 4),  # this process's, all threads
                "prediction_ids": [row.pk for row in rows],
                # The requests whose texts shared this pass; the task's own request is `request_id`.
                "request_ids": sorted({row.request_id for row in rows if row.request_id}),
            },
        )
    return _results_write(model_name, classifier.version, rows, results, task_id=task_id)


def _results_write(model_name: str, version: str, rows: list[Prediction], results: list, *, task_id: str) -> dict:
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
    # Only the task holding a row writes it: a slow worker whose row was requeued and taken by
    # another one must not overwrite that newer run.
    held_ids = _results_store(rows, task_id=task_id)
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
    return counts


def _row_fill(row: Prediction, result, *, version: str, finished: datetime) -> None:
    """Set the result fields of a row from the model's answer, or from the exception its text raised."""
    row.model_version, row.finished_at = version, finished
    if isinstance(result, Exception):
        row.status, row.error = PredictionStatus.FAILED, f"{type(result).__name__}: {result}"[:2000]
        row.label, row.score, row.scores, row.labels = "", None, None, None
    else:
        row.status, row.error = PredictionStatus.SUCCEEDED, ""
        row.label, row.score, row.scores, row.labels = result.label, result.score, result.scores, result.labels


RESULT_FIELDS = ("status", "error", "label", "score", "scores", "labels", "model_version", "finished_at")
NOTIFIED_FIELDS = (*RESULT_FIELDS, "started_at")  # what a waiting request's answer takes from the worker
_NOTIFIED_TIMES = ("started_at", "finished_at")  # sent as ISO 8601


def finished_fields(row: Prediction) -> dict:
    """The fields a finished row's notification carries (JSON-ready): what the worker committed."""
    fields = {name: getattr(row, name) for name in NOTIFIED_FIELDS}
    for name in _NOTIFIED_TIMES:
        fields[name] = fields[name].isoformat() if fields[name] is not None else None
    return fields


def finished_apply(prediction: Prediction, fields: dict) -> bool:
    """Take a notification's fields onto the waiting request's row object, as a read of the row
    would; True if they say it finished. Anything unexpected (False) leaves the row to be read."""
    try:
        values = {name: fields[name] for name in NOTIFIED_FIELDS}
        for name in _NOTIFIED_TIMES:
            values[name] = datetime.fromisoformat(values[name]) if values[name] is not None else None
    except (KeyError, TypeError, ValueError):
        return False
    if values["status"] not in FINISHED_STATUSES:
        return False
    for name, value in values.items():
        setattr(prediction, name, value)
    return True


def _results_store(rows: list[Prediction], *, task_id: str) -> set[int]:
    """Write the result fields of the rows still running under `task_id`; returns their ids.

    On PostgreSQL, one statement whatever the number of rows (UPDATE … FROM (VALUES …) WHERE
    status = running AND task_id = … RETURNING id); Django's bulk_update built a CASE WHEN per field
    and row, about 1 ms of CPU per row (README, Throughput). Elsewhere (SQLite), bulk_update after
    locking the held rows.
    """
    if not rows:
        return set()
    fields = [Prediction._meta.get_field(name) for name in RESULT_FIELDS]
    if connection.vendor != "postgresql":
        with transaction.atomic():
            held = Prediction.objects.filter(status=PredictionStatus.RUNNING, task_id=task_id)
            ids = set(held.select_for_update().filter(pk__in=[r.pk for r in rows]).values_list("pk", flat=True))
            held.bulk_update([row for row in rows if row.pk in ids], list(RESULT_FIELDS))
        return ids
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    assignments = ", ".join(f"{quote(f.column)} = CAST(v.{quote(f.column)} AS {f.db_type(connection)})" for f in fields)
    placeholder = "(" + ", ".join(["%s"] * (len(fields) + 1)) + ")"
    params: list = []
    for row in rows:
        params.append(row.pk)
        params.extend(f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields)
    table = quote(Prediction._meta.db_table)
    sql = (
        f"UPDATE {table} AS p SET {assignments} "
        f"FROM (VALUES {', '.join([placeholder] * len(rows))}) AS v(id, {columns}) "
        f"WHERE p.id = v.id AND p.status = %s AND p.task_id = %s RETURNING p.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, PredictionStatus.RUNNING.value, task_id])
        return {pk for (pk,) in cursor.fetchall()}


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


def batch_wait(batch: Batch, *, timeout: float) -> bool:
    """Wait until every prediction of the batch is finished or `timeout` seconds pass; True if finished."""
    from predictions.notify import batch_finished_wait

    unfinished = Prediction.objects.filter(batch=batch, status__in=[PredictionStatus.QUEUED, PredictionStatus.RUNNING])
    return batch_finished_wait(batch.pk, timeout=timeout, is_finished=lambda: not unfinished.exists())


def prediction_wait(prediction: Prediction, *, timeout: float) -> Prediction:
    """Wait until the row is finished or `timeout` seconds pass (pub/sub with Redis, else polling)."""
    from predictions.notify import finished_wait

    def is_finished() -> bool:
        prediction.refresh_from_db()
        return prediction.is_finished

    if not prediction.is_finished:
        finished_wait(
            prediction.pk,
            timeout=timeout,
            is_finished=is_finished,
            finished_from=lambda fields: finished_apply(prediction, fields),
        )
    return prediction


# --- Back-pressure: MAX_QUEUED -------------------------------------------------------------------

QUEUE_DEPTH_REFRESH_SECONDS = 1.0


class QueueFull(Exception):
    """Accepting the submission would put more than MAX_QUEUED predictions in flight."""

    def __init__(self, *, in_flight: int, adding: int, limit: int) -> None:
        super().__init__(
            f"The queue is full: {in_flight} predictions are queued or running and {adding} more would pass "
            f"the limit of {limit} (MAX_QUEUED). Nothing was stored; retry later."
        )
        self.in_flight, self.adding, self.limit = in_flight, adding, limit


class _QueueDepth:
    """Predictions in flight as this process last counted them, plus what it admitted since.

    The COUNT runs at most once per QUEUE_DEPTH_REFRESH_SECONDS per process, so a submission
    costs a clock read, not a query. Other processes' submissions show at the next count.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0
        self.counted_at = float("-inf")

    def admit(self, adding: int, limit: int) -> None:
        with self.lock:
            if time.monotonic() - self.counted_at >= QUEUE_DEPTH_REFRESH_SECONDS:
                self.value = predictions_in_flight_count()
                self.counted_at = time.monotonic()
            if self.value + adding > limit:
                raise QueueFull(in_flight=self.value, adding=adding, limit=limit)
            self.value += adding

    def forget(self) -> None:
        """Count again at the next submission (tests, and after a bulk change)."""
        with self.lock:
            self.counted_at = float("-inf")


queue_depth = _QueueDepth()


def queue_admit(*, adding: int) -> None:
    """Refuse (QueueFull) a submission of `adding` texts that would take the predictions queued or
    running over MAX_QUEUED; 0 means no limit. A soft limit: see README, Limits and back-pressure."""
    limit = settings.MAX_QUEUED
    if limit:
        queue_depth.admit(adding, limit)


# --- Idempotency keys ------------------------------------------------------------------------------


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was used before, by this user on this endpoint, with a different request."""


@dataclass(frozen=True)
class StoredResponse:
    """A response to a keyed POST: the first one (replayed=True when this request is a retry)."""

    status_code: int
    body: Any
    location: str
    replayed: bool
    record: IdempotencyKey


def request_fingerprint(data: dict) -> str:
    """SHA-256 of the validated request: equal for requests that mean the same thing."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def idempotent_submission(
    *, owner, key: str, endpoint: str, request_data: dict, respond: Callable[[], tuple[int, Any, str]]
) -> StoredResponse:
    """Run `respond` (create the rows; return status, body, Location) once per (owner, key, endpoint)
    within IDEMPOTENCY_TTL_HOURS; a retry gets the first response back and creates nothing.

    The rows and the key commit in one transaction. A concurrent request with the same key blocks on
    the key's unique index until the first commits, then rolls its own rows back and replays the
    first response: duplicates never both create, and no request is ever left "in flight".
    """
    fingerprint = request_fingerprint(request_data)
    record = _idempotency_key_live(owner=owner, key=key, endpoint=endpoint)
    if record is not None:
        return _idempotent_replay(record, fingerprint)
    try:
        with transaction.atomic():
            status_code, body, location = respond()
            record = IdempotencyKey.objects.create(
                owner=owner,
                key=key,
                endpoint=endpoint,
                request_sha256=fingerprint,
                status_code=status_code,
                response_body=json.dumps(body, cls=DjangoJSONEncoder),
                location=location,
            )
    except IntegrityError:
        record = _idempotency_key_live(owner=owner, key=key, endpoint=endpoint)
        if record is None:
            raise
        return _idempotent_replay(record, fingerprint)
    return StoredResponse(status_code, body, location, replayed=False, record=record)


def idempotency_response_update(record: IdempotencyKey, *, status_code: int, body: Any) -> None:
    """Replace the stored response (a ?wait that saw the row finish answers 200: retries get that)."""
    IdempotencyKey.objects.filter(pk=record.pk).update(
        status_code=status_code, response_body=json.dumps(body, cls=DjangoJSONEncoder)
    )


def idempotency_keys_expire(*, max_rows: int) -> int:
    """Delete up to `max_rows` keys older than IDEMPOTENCY_TTL_HOURS (run by the sweeper)."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    ids = list(IdempotencyKey.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:max_rows])
    return IdempotencyKey.objects.filter(pk__in=ids).delete()[0] if ids else 0


def _idempotency_key_live(*, owner, key: str, endpoint: str) -> IdempotencyKey | None:
    """The unexpired key; an expired one is deleted here, so the key can be used afresh."""
    record = idempotency_key_get(owner=owner, key=key, endpoint=endpoint)
    if record is None:
        return None
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    if record.created_at < cutoff:
        IdempotencyKey.objects.filter(pk=record.pk, created_at__lt=cutoff).delete()
        return None
    return record


def _idempotent_replay(record: IdempotencyKey, fingerprint: str) -> StoredResponse:
    if record.request_sha256 != fingerprint:
        raise IdempotencyKeyReused(
            "This key was already used for a different request to this endpoint; "
            "send a new key for a new request (keys expire after IDEMPOTENCY_TTL_HOURS)."
        )
    return StoredResponse(
        record.status_code, json.loads(record.response_body), record.location, replayed=True, record=record
    )


# --- Re-running predictions (manage.py reprocess and the admin's re-run action) -------------------

ARCHIVED_FIELDS = tuple(model_output_fields())
REVIEW_FIELDS = (
    "corrected_label",
    "review_note",
    "reviewed_by",
    "reviewed_at",
)  # a review belongs to the result it saw


class SelectionError(ValueError):
    """The selectors given to reprocess are missing or invalid; the message says which."""


def reprocess_selection(
    *,
    everything: bool = False,
    statuses: Sequence[str] = (),
    model: str = "",
    model_version: str = "",
    since=None,
    until=None,
    ids: Sequence[int] = (),
    batch: int | None = None,
):
    """The predictions the selectors match (they combine with AND); refuses an empty selection."""
    if not (everything or statuses or model or model_version or since or until or ids or batch):
        raise SelectionError(
            "no selector: give --all or at least one of --status, --model, --model-version, --since, --until, --ids, --batch"
        )
    bad = [s for s in statuses if s not in PredictionStatus.values]
    if bad:
        raise SelectionError(f"unknown status {bad[0]!r}; one of {', '.join(PredictionStatus.values)}")
    queryset = Prediction.objects.filter(redacted_at__isnull=True)  # a redacted row's text is only a marker
    if statuses:
        queryset = queryset.filter(status__in=statuses)
    if model:
        queryset = queryset.filter(model_name=model)
    if model_version:
        queryset = queryset.filter(model_version=model_version)
    if since:
        queryset = queryset.filter(created_at__gte=since)
    if until:
        queryset = queryset.filter(created_at__lt=until)
    if ids:
        queryset = queryset.filter(pk__in=list(ids))
    if batch:
        queryset = queryset.filter(batch_id=batch)
    return queryset


def reprocess_run_open(
    *, selectors: dict, to_model: str = "", sync: bool = False, source: str = "command", user=None, resume: bool = True
):
    """The interrupted run with the same selectors and target (resumed), or a new one. Returns (run, resumed).

    A run is interrupted until it has dispatched every selected row; after that the same command
    starts a new run (e.g. the same selection again after a model upgrade).
    """
    key = hashlib.sha256(
        json.dumps({"selectors": selectors, "to_model": to_model}, sort_keys=True, default=str).encode()
    ).hexdigest()
    interrupted = ReprocessRun.objects.filter(key=key, status=ReprocessRun.Status.RUNNING, dispatched_at__isnull=True)
    run = interrupted.order_by("-pk").first() if resume else None
    if run is not None:
        return run, True
    run = ReprocessRun.objects.create(
        key=key,
        selectors=json.loads(json.dumps(selectors, default=str)),
        to_model=to_model,
        sync=sync,
        source=source,
        created_by=user,
    )
    return run, False


def reprocess_pending(run, selection) -> tuple[list[int], int]:
    """Ids still to do in this run, oldest first, and how many selected rows were skipped as in flight.

    Still to do: rows this run archived but did not finish (an interrupted run), then matching
    finished rows this run has not touched. Rows queued or running elsewhere are left alone.
    """
    unfinished = list(
        Prediction.objects.filter(history__run=run).exclude(status__in=FINISHED_STATUSES).values_list("pk", flat=True)
    )
    untouched = selection.exclude(history__run=run)
    fresh = list(
        untouched.filter(status__in=FINISHED_STATUSES, redacted_at__isnull=True)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    in_flight = untouched.exclude(status__in=FINISHED_STATUSES).count()
    return sorted(set(unfinished) | set(fresh)), in_flight


def reprocess_chunk(run, ids: Sequence[int], *, sync: bool) -> None:
    """Archive the current result of each row into its history, reset it to queued, then run or queue it."""
    with transaction.atomic():
        rows = list(
            Prediction.objects.select_for_update()
            .filter(pk__in=list(ids), status__in=FINISHED_STATUSES, redacted_at__isnull=True)
            .exclude(history__run=run)
            .only("pk", *ARCHIVED_FIELDS, *REVIEW_FIELDS)
        )
        PredictionResult.objects.bulk_create(
            [
                PredictionResult(
                    prediction=row, run=run, **{f: getattr(row, f) for f in ARCHIVED_FIELDS + REVIEW_FIELDS}
                )
                for row in rows
            ]
        )
        by_model: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            by_model[run.to_model or row.model_name].append(row.pk)
        for model_name, pks in by_model.items():
            Prediction.objects.filter(pk__in=pks).update(
                status=PredictionStatus.QUEUED,
                model_name=model_name,
                model_version=_version_or_blank(model_name),
                label="",
                score=None,
                scores=None,
                labels=None,
                cached=False,
                error="",
                task_id="",
                started_at=None,
                finished_at=None,
                published_at=None,
                corrected_label="",
                review_note="",
                reviewed_by=None,
                reviewed_at=None,
            )
        if not sync:
            queued = list(ids)
            transaction.on_commit(lambda: predictions_publish(queued))
    if sync:
        predictions_run(ids, task_id=f"reprocess-run-{run.pk}", others=False)
    logger.info("reprocess run %s: %d row(s) archived and %s", run.pk, len(rows), "run" if sync else "queued")


def _version_or_blank(model_name: str) -> str:
    """The model's version, or "" if its files can't be read now (the worker then fails the row, saying why)."""
    from predictions.registry import UnknownModel
    from textclf import ModelLoadError

    try:
        return model_version(model_name)
    except (ModelLoadError, UnknownModel, OSError) as exc:
        logger.error("model %r unavailable: %s", model_name, exc)
        return ""


def reprocess_summary(run) -> dict[str, int]:
    """Selected, re-run (finished), unchanged label, changed label, failed, and still pending."""
    finished = Q(prediction__status__in=FINISHED_STATUSES)
    succeeded = Q(prediction__status=PredictionStatus.SUCCEEDED)
    totals = PredictionResult.objects.filter(run=run).aggregate(
        rerun=Count("pk", filter=finished),
        unchanged=Count("pk", filter=succeeded & Q(label=F("prediction__label"))),
        changed=Count("pk", filter=succeeded & ~Q(label=F("prediction__label"))),
        failed=Count("pk", filter=Q(prediction__status=PredictionStatus.FAILED)),
        pending=Count("pk", filter=~finished),
    )
    return {"selected": run.selected, **totals}


def reprocess_dispatch(run, pending: Sequence[int], *, chunk_size: int, sync: bool, on_chunk=lambda n: None) -> None:
    """Archive and run (or queue) `pending` in chunks; then mark the run dispatched, so that the
    same selection invoked again starts a new run rather than resuming this one."""
    for start in range(0, len(pending), chunk_size):
        chunk = pending[start : start + chunk_size]
        reprocess_chunk(run, chunk, sync=sync)
        on_chunk(len(chunk))
    ReprocessRun.objects.filter(pk=run.pk, dispatched_at__isnull=True).update(dispatched_at=timezone.now())


def reprocess_runs_close() -> int:
    """Mark finished the dispatched runs none of whose rows is still queued or running."""
    open_runs = ReprocessRun.objects.filter(status=ReprocessRun.Status.RUNNING, dispatched_at__isnull=False)
    done = open_runs.exclude(
        archived_results__prediction__status__in=[PredictionStatus.QUEUED, PredictionStatus.RUNNING]
    )
    return done.update(status=ReprocessRun.Status.FINISHED, finished_at=timezone.now())


def predictions_rerun(*, queryset, user, to_model: str = "") -> tuple[Any, int]:
    """The admin's re-run action: the same path as `reprocess` (queued to workers), in chunks."""
    run, _ = reprocess_run_open(
        selectors={"admin_selection_at": timezone.now().isoformat()},
        to_model=to_model,
        source="admin",
        user=user,
        resume=False,
    )
    pending, _ = reprocess_pending(run, queryset)
    ReprocessRun.objects.filter(pk=run.pk).update(selected=len(pending))
    reprocess_dispatch(run, pending, chunk_size=settings.BATCH_CHUNK_SIZE, sync=False)
    return run, len(pending)


# --- Review ------------------------------------------------------------------------------------


def prediction_review(*, prediction: Prediction, reviewer, corrected_label: str, note: str) -> None:
    """Set the correction and note, stamp who and when, and append the review to the trail."""
    now = timezone.now()
    Prediction.objects.filter(pk=prediction.pk).update(
        corrected_label=corrected_label, review_note=note, reviewed_by=reviewer, reviewed_at=now
    )
    PredictionReview.objects.create(
        prediction=prediction, reviewer=reviewer, corrected_label=corrected_label, note=note
    )
    prediction.corrected_label, prediction.review_note = corrected_label, note
    prediction.reviewed_by, prediction.reviewed_at = reviewer, now


def predictions_mark_reviewed(*, queryset, reviewer) -> int:
    """Mark rows reviewed as they stand (no correction), each recorded in the trail; in chunks."""
    ids = list(queryset.order_by("pk").values_list("pk", flat=True))
    now = timezone.now()
    for start in range(0, len(ids), 1000):
        with transaction.atomic():
            rows = list(
                Prediction.objects.select_for_update()
                .filter(pk__in=ids[start : start + 1000])
                .only("pk", "corrected_label", "review_note")
            )
            Prediction.objects.filter(pk__in=[r.pk for r in rows]).update(reviewed_by=reviewer, reviewed_at=now)
            PredictionReview.objects.bulk_create(
                [
                    PredictionReview(
                        prediction=r,
                        reviewer=reviewer,
                        corrected_label=r.corrected_label,
                        note=r.review_note or "marked reviewed",
                    )
                    for r in rows
                ]
            )
    return len(ids)


# --- Retention (manage.py purge_predictions) ------------------------------------------------------

REDACTED_TEXT = "[redacted]"


def predictions_purge(
    *,
    older_than_days: int,
    redact: bool = False,
    dry_run: bool = False,
    batch_size: int = 1000,
    now=None,
    on_chunk=lambda n: None,
) -> dict[str, int]:
    """Delete (or, with `redact`, keep but redact) finished predictions created more than `older_than_days` ago.

    Deleting takes each row's result history and review trail with it, then the batches left empty.
    Redacting replaces the text with REDACTED_TEXT, clears its SHA-256 and the reviewers' free-text
    notes (they may quote it) and stamps `redacted_at`; labels, scores and who reviewed stay for audit.
    Either way the rows' result-cache entries (every model version they and their history were run
    under) are deleted, so the text can no longer be confirmed through the cache. Rows go in chunks
    of `batch_size`, each in its own short transaction, walked by primary key (bounded memory).
    Queued and running rows are left alone. With `dry_run`, nothing changes: the counts say what would.
    """
    from predictions.cache import result_cache_delete_many
    from predictions.selectors import predictions_purgeable

    moment = now or timezone.now()
    cutoff = moment - timedelta(days=older_than_days)
    selection = predictions_purgeable(created_before=cutoff, redact=redact)
    counts = {
        "predictions": 0,
        "history": 0,
        "reviews": 0,
        "batches": 0,
        "cache_keys": 0,
        "unfinished_left": Prediction.objects.filter(created_at__lt=cutoff)
        .exclude(status__in=FINISHED_STATUSES)
        .count(),
    }
    if dry_run:
        history = PredictionResult.objects.filter(prediction__in=selection)
        reviews = PredictionReview.objects.filter(prediction__in=selection)
        if redact:  # what would change: the notes that have something in them
            history, reviews = history.exclude(review_note=""), reviews.exclude(note="")
        counts.update(predictions=selection.count(), history=history.count(), reviews=reviews.count())
        if not redact:
            kept = Prediction.objects.exclude(pk__in=selection.values("pk")).filter(batch__isnull=False)
            counts["batches"] = (
                Batch.objects.filter(created_at__lt=cutoff).exclude(pk__in=kept.values("batch_id")).count()
            )
        return counts

    last_pk = 0
    while True:
        with transaction.atomic():
            rows = list(
                selection.filter(pk__gt=last_pk)
                .order_by("pk")
                .select_for_update()
                .values_list("pk", "model_name", "model_version", "text_sha256")[:batch_size]
            )
            if not rows:
                break
            last_pk = rows[-1][0]
            ids = [pk for pk, *_ in rows]
            digests = {pk: digest for pk, _, _, digest in rows}
            cache_entries = {(name, version, digest) for _, name, version, digest in rows if digest}
            history = PredictionResult.objects.filter(prediction_id__in=ids)
            for pk, name, version in history.values_list("prediction_id", "model_name", "model_version").distinct():
                if digests[pk]:
                    cache_entries.add((name, version, digests[pk]))
            reviews = PredictionReview.objects.filter(prediction_id__in=ids)
            if redact:
                counts["predictions"] += Prediction.objects.filter(pk__in=ids).update(
                    text=REDACTED_TEXT, text_sha256="", redacted_at=moment
                )
                Prediction.objects.filter(pk__in=ids).exclude(review_note="").update(review_note=REDACTED_TEXT)
                counts["history"] += history.exclude(review_note="").update(review_note=REDACTED_TEXT)
                counts["reviews"] += reviews.exclude(note="").update(note=REDACTED_TEXT)
            else:
                counts["history"] += history.delete()[0]
                counts["reviews"] += reviews.delete()[0]
                counts["predictions"] += Prediction.objects.filter(pk__in=ids).only("pk").delete()[0]
            # Inside the transaction: if the cache can't be cleared, this chunk is rolled back and the error raised.
            counts["cache_keys"] += result_cache_delete_many(cache_entries)
        on_chunk(len(ids))
    if not redact:
        emptied = Batch.objects.filter(created_at__lt=cutoff, predictions__isnull=True).order_by("pk")
        last_pk = 0
        while ids := list(emptied.filter(pk__gt=last_pk).values_list("pk", flat=True)[:batch_size]):
            last_pk = ids[-1]
            counts["batches"] += Batch.objects.filter(pk__in=ids, predictions__isnull=True).delete()[0]
    logger.info("purge (%s, older than %d days): %s", "redact" if redact else "delete", older_than_days, counts)
    return counts
