"""The four statements the ORM cannot send in one round trip, with named parameters, in one place.

- the submission's INSERT of a new prediction, built once and bound server-side
  (docs/performance.md, Hand-built INSERT);
- the worker's claim: pick (by lane and turn), mark and return rows in one UPDATE … RETURNING,
  skipping locked rows;
- the worker's result write: every row of a forward pass in one UPDATE … FROM (VALUES …)
  (docs/performance.md, One-statement result write);
- a re-run's archive: a chunk's current results copied into their history in one INSERT … SELECT,
  the rows locked, never loaded into Python (docs/performance.md, Re-run archive in one statement).

On SQLite (the embedded default), the INSERT, the result write and the archive are Django's own
save(), bulk_update() and bulk_create(); the claim runs there too, without row locks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
from django.db import connection, transaction
from django.db.models import Field
from django.utils import timezone

from mlsite.fastpaths import fast_path
from predictions.models import FINISHED_STATUSES, RESULT_FIELDS, Lane, Prediction, PredictionResult, PredictionStatus

# In the model's field order, as Model.from_db expects them.
CLAIMED_FIELDS = tuple(
    f.attname
    for f in Prediction._meta.concrete_fields
    if f.attname
    in {
        "id",
        "batch_id",
        "text",
        "text_sha256",
        "model_name",
        "lane",
        "turn",
        "attempts",
        "created_at",
        "started_at",
        "request_id",
    }
)


@functools.cache
def _insert_statement() -> tuple[str, tuple]:
    """The INSERT Model.save() sends for a new Prediction, and the fields it takes."""
    meta = Prediction._meta
    fields = tuple(f for f in meta.local_concrete_fields if f is not meta.auto_field)
    assert not any(f.generated or f.has_db_default() for f in fields), "save() would send these differently"
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)  # type: ignore[arg-type]  # a concrete field has a column
    values = ", ".join(f"%({f.attname})s" for f in fields)
    sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({values}) RETURNING {quote(meta.pk.column)}"  # type: ignore[arg-type]  # as above
    return sql, fields


def prediction_insert(prediction: Prediction) -> None:
    """prediction.save() of a new row: the same statement and values, built once instead of for each row,
    and bound server-side (its values sent apart from it; never a prepared statement: Django turns
    psycopg's off, which keeps it working through PgBouncer in transaction mode). No pre_save/post_save
    signal is sent: no receiver listens for Prediction (a test checks). Django's cursor wrapper stays
    around it (query logging, execute wrappers). On SQLite, save() itself."""
    if connection.vendor != "postgresql" or not fast_path("prebuilt_insert"):
        prediction.save()
        return
    sql, fields = _insert_statement()
    values = {f.attname: f.get_db_prep_save(f.pre_save(prediction, True), connection) for f in fields}
    connection.close_if_health_check_failed()  # as connection.cursor() does: replaces a connection the
    connection.ensure_connection()  # server closed (a restart) before this request's first statement
    raw = psycopg.Cursor(connection.connection)
    wrapped = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)  # type: ignore[arg-type]  # django-stubs: these wrap a DB-API cursor
    with transaction.mark_for_rollback_on_error(connection.alias), wrapped as cursor:  # as save() does
        cursor.execute(sql, values)
        prediction.pk = cursor.fetchone()[0]
    prediction._state.adding, prediction._state.db = False, connection.alias


@functools.lru_cache(maxsize=512)
def _claim_statement(*, own: int, reclaim: bool, others: bool, reserve: bool, skip_locked: bool, models: int) -> str:
    """Three picks, locked as they are read, then one UPDATE of what they picked:

    - urgent: rows this task already holds (`reclaim`), then the interactive lane (its own rows first,
      then the oldest), up to the limit;
    - background: with `reserve`, the background lane's next turns, up to its share of the slice,
      whatever else is queued (so that it is never starved);
    - rest: the bulk lane, then background, by turn, filling the slice (CLAIM_BULK_ROWS) up to the limit.
    """
    table = connection.ops.quote_name(Prediction._meta.db_table)
    held = "(status = %(running)s AND task_id = %(task_id)s)" if reclaim else "FALSE"
    own_ids = ", ".join(f"%(own_{i})s" for i in range(own))
    mine = f"id IN ({own_ids})" if own else "FALSE"
    served = f"model_name IN ({', '.join(f'%(model_{i})s' for i in range(models))})" if models else "TRUE"
    ready = f"status = %(queued)s AND ({'TRUE' if others else mine}) AND {served}"
    lock = " FOR UPDATE SKIP LOCKED" if skip_locked else ""
    least, greatest = ("LEAST", "GREATEST") if connection.vendor == "postgresql" else ("MIN", "MAX")
    room = f"{greatest}(0, {least}(%(slice)s, %(limit)s - (SELECT count(*) FROM urgent)))"
    background = (
        f"SELECT id FROM {table} WHERE {ready} AND lane = {int(Lane.BACKGROUND)} "
        f"ORDER BY turn, id LIMIT %(reserve)s{lock}"
        if reserve
        else f"SELECT id FROM {table} WHERE FALSE"
    )
    return (
        f"WITH urgent AS (SELECT id FROM {table} WHERE {held} OR ({ready} AND lane = {int(Lane.INTERACTIVE)}) "
        f"ORDER BY CASE WHEN {held} THEN 0 WHEN {mine} THEN 1 ELSE 2 END, id LIMIT %(limit)s{lock}), "
        f"background AS ({background}), "
        f"rest AS (SELECT id FROM {table} WHERE {ready} AND lane > {int(Lane.INTERACTIVE)} "
        f"AND id NOT IN (SELECT id FROM background) "
        f"ORDER BY lane, turn, id LIMIT {greatest}(0, {room} - (SELECT count(*) FROM background)){lock}) "
        f"UPDATE {table} SET status = %(running)s, started_at = %(now)s, attempts = attempts + 1, "
        f"task_id = %(task_id)s "
        f"WHERE id IN (SELECT id FROM urgent UNION ALL SELECT id FROM background UNION ALL SELECT id FROM rest) "
        f"RETURNING {', '.join(CLAIMED_FIELDS)}"
    )


def rows_claim(
    own_ids: Sequence[int],
    *,
    task_id: str,
    limit: int,
    slice_rows: int,
    background_rows: int,
    others: bool,
    reclaim: bool,
    now: datetime,
    models: Sequence[str] = (),
) -> list[Prediction]:
    """Mark rows as running under `task_id` and return them, interactive first, then by lane and turn.

    Taken first, with `reclaim`, the rows this task already holds (an earlier delivery of its message
    whose worker died), then queued interactive rows (its own, or with `others` anyone's), up to
    `limit`; then up to `background_rows` background rows whatever else is queued; then, while under
    `limit`, bulk and background rows up to `slice_rows` in all. With `models` (a worker pool), only
    rows of those models are taken. One statement
    picks, marks and returns them, so two workers never claim the same row and a claim costs one
    round trip (docs/architecture.md, Lanes).
    """
    sql = _claim_statement(
        own=len(own_ids),
        reclaim=reclaim and bool(task_id),
        others=others,
        reserve=background_rows > 0,
        skip_locked=connection.features.has_select_for_update_skip_locked,
        models=len(models),
    )
    params: dict[str, Any] = {
        "running": PredictionStatus.RUNNING.value,
        "queued": PredictionStatus.QUEUED.value,
        "task_id": task_id,
        "now": now,
        "limit": limit,
        "slice": slice_rows,
        "reserve": background_rows,
        **{f"own_{i}": pk for i, pk in enumerate(own_ids)},
        **{f"model_{i}": name for i, name in enumerate(models)},
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = [
            Prediction.from_db(connection.alias, CLAIMED_FIELDS, [_aware(v) for v in values])
            for values in cursor.fetchall()
        ]
    return sorted(rows, key=lambda row: (row.lane, row.turn, row.pk))


def _aware(value: object) -> object:
    """A raw cursor skips Django's converters: SQLite returns naive UTC datetimes (PostgreSQL, aware ones)."""
    if isinstance(value, datetime) and timezone.is_naive(value):
        return timezone.make_aware(value, UTC)
    return value


@functools.lru_cache(maxsize=256)
def _results_statement(rows: int) -> str:
    fields = [cast(Field, Prediction._meta.get_field(name)) for name in RESULT_FIELDS]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)  # type: ignore[arg-type]  # a concrete field has a column
    assignments = ", ".join(f"{quote(f.column)} = CAST(v.{quote(f.column)} AS {f.db_type(connection)})" for f in fields)  # type: ignore[arg-type]  # as above
    values = ", ".join(
        "(" + ", ".join([f"%(r{i}_id)s", *(f"%(r{i}_{f.attname})s" for f in fields)]) + ")" for i in range(rows)
    )
    return (
        f"UPDATE {quote(Prediction._meta.db_table)} AS p SET {assignments} "
        f"FROM (VALUES {values}) AS v(id, {columns}) "
        f"WHERE p.id = v.id AND p.status = %(running)s AND p.task_id = %(task_id)s RETURNING p.id"
    )


def results_store(rows: Sequence[Prediction], *, task_id: str) -> set[int]:
    """Write the result fields of the rows still running under `task_id`; returns their ids.

    Only the task holding a row writes it: a slow worker whose row was requeued and taken by another
    one must not overwrite that newer run. Django's bulk_update built a CASE WHEN per field and row.
    """
    if not rows:
        return set()
    if connection.vendor != "postgresql" or not fast_path("one_statement_results"):
        with transaction.atomic():
            held = Prediction.objects.filter(status=PredictionStatus.RUNNING, task_id=task_id)
            ids = set(held.select_for_update().filter(pk__in=[r.pk for r in rows]).values_list("pk", flat=True))
            held.bulk_update([row for row in rows if row.pk in ids], list(RESULT_FIELDS))
        return ids
    fields = [cast(Field, Prediction._meta.get_field(name)) for name in RESULT_FIELDS]
    params: dict = {"running": PredictionStatus.RUNNING.value, "task_id": task_id}
    for i, row in enumerate(rows):
        params[f"r{i}_id"] = row.pk
        for f in fields:
            params[f"r{i}_{f.attname}"] = f.get_db_prep_save(getattr(row, f.attname), connection)
    with connection.cursor() as cursor:
        cursor.execute(_results_statement(len(rows)), params)
        return {pk for (pk,) in cursor.fetchall()}


@functools.cache
def _archive_statement(copied: tuple[str, ...]) -> str:
    """INSERT … SELECT of the finished, unredacted rows among the ids not yet archived for the run,
    locked in id order; returns each archived row's id and model."""
    quote = connection.ops.quote_name
    columns = [cast(Field, PredictionResult._meta.get_field(name)).column for name in copied]
    source = [cast(Field, Prediction._meta.get_field(name)).column for name in copied]
    prediction, result = quote(Prediction._meta.db_table), quote(PredictionResult._meta.db_table)
    return (
        f"WITH chosen AS (SELECT * FROM {prediction} AS p WHERE p.id = ANY(%(ids)s) "
        f"AND p.status = ANY(%(finished)s) AND p.redacted_at IS NULL "
        f"AND NOT EXISTS (SELECT 1 FROM {result} AS r WHERE r.prediction_id = p.id AND r.run_id = %(run)s) "
        f"ORDER BY p.id FOR UPDATE OF p) "
        f"INSERT INTO {result} (prediction_id, run_id, archived_at, {', '.join(quote(c) for c in columns)}) "  # type: ignore[arg-type]  # a concrete field has a column
        f"SELECT id, %(run)s, %(now)s, {', '.join(quote(c) for c in source)} FROM chosen ORDER BY id "  # type: ignore[arg-type]  # as above
        f"RETURNING prediction_id, model_name"
    )


def results_archive(run_id: int, ids: Sequence[int], fields: Sequence[str]) -> list[tuple[int, str]]:
    """Copy `fields` of the finished, unredacted rows among `ids` that run `run_id` has not archived
    yet into their history, locking the rows; returns (id, model name) of each row archived, by id.
    Call it inside a transaction: the locks hold until it commits.

    Django's way loads every row (its scores and labels decoded from JSON) and sends them back in a
    bulk_create; the rows never leave the database here.
    """
    if connection.vendor != "postgresql" or not fast_path("archive_by_select"):
        attnames = [
            cast(Field, Prediction._meta.get_field(name)).attname for name in fields
        ]  # reviewed_by_id: no query
        rows = list(
            Prediction.objects.select_for_update()
            .filter(pk__in=list(ids), status__in=FINISHED_STATUSES, redacted_at__isnull=True)
            .exclude(history__run_id=run_id)
            .order_by("pk")
            .only("pk", *fields)
        )
        PredictionResult.objects.bulk_create(
            [PredictionResult(prediction=row, run_id=run_id, **{a: getattr(row, a) for a in attnames}) for row in rows]
        )
        return [(row.pk, row.model_name) for row in rows]
    params: dict[str, Any] = {
        "ids": list(ids),
        "finished": list(FINISHED_STATUSES),
        "run": run_id,
        "now": timezone.now(),
    }
    with connection.cursor() as cursor:
        cursor.execute(_archive_statement(tuple(fields)), params)
        return sorted(cursor.fetchall())
