"""`?wait=`: a request waits for its row (or batch) to finish, answered from the worker's notification."""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import DatabaseError

from mlsite.dbfaults import database_unreachable, reconnecting
from predictions.models import FINISHED_STATUSES, RESULT_FIELDS, Batch, Prediction, PredictionStatus
from predictions.notify import batch_finished_wait, finished_wait

logger = logging.getLogger(__name__)

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


def prediction_wait(prediction: Prediction, *, timeout: float) -> Prediction:
    """Wait until the row is finished or `timeout` seconds pass (pub/sub with Redis, else polling).

    The row is committed: a lost database never makes this raise. A read on a dropped connection is
    tried again on a new one; if the database cannot be reached, the wait ends and the row is
    returned as it was before it (the caller answers 202 with its URL)."""
    if prediction.is_finished:
        return prediction
    before = vars(prediction).copy()  # not getattr: a field the INSERT did not load would be read

    def is_finished() -> bool:
        reconnecting(prediction.refresh_from_db)
        return prediction.is_finished

    try:
        finished_wait(
            prediction.pk,
            timeout=timeout,
            is_finished=is_finished,
            finished_from=lambda fields: finished_apply(prediction, fields),
        )
    except DatabaseError as exc:
        if not database_unreachable(exc):
            raise
        logger.warning("?wait for prediction %s ended early, database unreachable: %s", prediction.pk, exc)
        vars(prediction).update(before)
    return prediction


def batch_wait(batch: Batch, *, timeout: float) -> bool:
    """Wait until every prediction of the batch is finished or `timeout` seconds pass; True if finished.
    A read on a dropped connection is tried again on a new one."""
    unfinished = Prediction.objects.filter(batch=batch, status__in=[PredictionStatus.QUEUED, PredictionStatus.RUNNING])
    return batch_finished_wait(batch.pk, timeout=timeout, is_finished=lambda: not reconnecting(unfinished.exists))
