"""Re-running predictions (manage.py reprocess and the admin's re-run action) without losing earlier results.

Each chosen row's current result (and the review of it) is archived into its history, then the row is
reset to queued and run again, by the workers or here (``--sync``). A run is resumable: invoked again
with the same selectors and target, it carries on with the rows it has not dispatched yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.expressions import CombinedExpression
from django.utils import timezone

from predictions.models import (
    Lane,
    Prediction,
    PredictionStatus,
    ReprocessRun,
    model_output_fields,
)
from predictions.registry import model_version_or_blank
from predictions.selectors import reprocess_pending
from predictions.services.dispatch import chunks_send
from predictions.services.lanes import turns_by_id
from predictions.services.sql import results_archive
from predictions.services.worker import predictions_run

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

ARCHIVED_FIELDS = tuple(model_output_fields())
REVIEW_FIELDS = (
    "corrected_label",
    "review_note",
    "reviewed_by",
    "reviewed_at",
)  # a review belongs to the result it saw


def reprocess_run_open(
    *,
    selectors: dict[str, Any],
    to_model: str = "",
    sync: bool = False,
    source: str = "command",
    user: User | None = None,
    resume: bool = True,
) -> tuple[ReprocessRun, bool]:
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


def reprocess_chunk(run: ReprocessRun, ids: Sequence[int], *, sync: bool) -> None:
    """Archive the current result of each row into its history, reset it to queued, then run or queue it."""
    with transaction.atomic():
        archived = results_archive(run.pk, ids, ARCHIVED_FIELDS + REVIEW_FIELDS)
        # Background lane, the turns after the lane's clock (read before these rows join it), in id
        # order: a later re-run of a few rows is not queued behind a long one (services.lanes).
        turns = turns_by_id([pk for pk, _ in archived], lane=Lane.BACKGROUND)
        by_model: dict[str, list[int]] = defaultdict(list)
        for pk, model_name in archived:
            by_model[run.to_model or model_name].append(pk)
        # Queued and marked published in one UPDATE per message's rows (each its task id), sent
        # after commit: the requeue and the publish mark are one write of each row, not two.
        sends: list[tuple[str, list[int], str]] = []
        published = None if sync else timezone.now()
        for model_name, pks in by_model.items():
            for start in range(0, len(pks), settings.PUBLISH_CHUNK_ROWS):
                part = pks[start : start + settings.PUBLISH_CHUNK_ROWS]
                task_id = "" if sync else str(uuid.uuid4())
                _requeue(part, model_name=model_name, turns=turns, task_id=task_id, published_at=published)
                sends.append((task_id, part, model_name))
        if not sync:
            transaction.on_commit(lambda: chunks_send(sends))
    if sync:
        predictions_run(ids, task_id=f"reprocess-run-{run.pk}", others=False)
    logger.info("reprocess run %s: %d row(s) archived and %s", run.pk, len(archived), "run" if sync else "queued")


def _requeue(
    pks: list[int], *, model_name: str, turns: CombinedExpression, task_id: str, published_at: datetime | None
) -> None:
    """Reset these archived rows to queued in the background lane, for `model_name`, with no result."""
    Prediction.objects.filter(pk__in=pks).update(
        lane=Lane.BACKGROUND,
        turn=turns,
        status=PredictionStatus.QUEUED,
        model_name=model_name,
        model_version=model_version_or_blank(model_name),
        label="",
        score=None,
        scores=None,
        labels=None,
        margin=None,
        cached=False,
        error="",
        task_id=task_id,
        attempts=0,  # counts this run's worker deaths: a row run before is not one to run alone
        started_at=None,
        finished_at=None,
        published_at=published_at,
        corrected_label="",
        review_note="",
        reviewed_by=None,
        reviewed_at=None,
    )


def reprocess_dispatch(
    run: ReprocessRun,
    pending: Sequence[int],
    *,
    chunk_size: int,
    sync: bool,
    rate: float | None = None,
    on_chunk: Callable[[int], None] = lambda n: None,
) -> None:
    """Archive and run (or queue) `pending` in chunks; then mark the run dispatched, so that the
    same selection invoked again starts a new run rather than resuming this one.

    With `rate` (rows a second), chunks hold at most a second's rows and each waits for its time, so
    the workers are fed no faster than that on average.
    """
    if rate:
        chunk_size = max(1, min(chunk_size, int(rate)))
    started = time.monotonic()
    for start in range(0, len(pending), chunk_size):
        if rate:
            time.sleep(max(0.0, started + start / rate - time.monotonic()))
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


def predictions_rerun(*, queryset: QuerySet[Prediction], user: User, to_model: str = "") -> tuple[ReprocessRun, int]:
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
    reprocess_dispatch(run, pending, chunk_size=settings.PUBLISH_CHUNK_ROWS, sync=False)
    return run, len(pending)
