"""A text or a batch becomes rows: answered from the result cache, or queued for a worker after commit."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from mlsite.logs import current_request_id
from predictions.cache import CACHED_FIELDS, result_cache_get, result_cache_get_many
from predictions.models import Batch, Lane, Prediction, PredictionStatus, text_sha256
from predictions.registry import model_version_or_blank
from predictions.services.backpressure import queue_admit
from predictions.services.dispatch import chunks_send, prediction_publish
from predictions.services.lanes import turns_take
from predictions.services.sql import prediction_insert

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def _prediction_build(
    *,
    owner: User,
    text: str,
    digest: str,
    model_name: str,
    version: str,
    hit: dict[str, Any] | None,
    batch: Batch | None = None,
    position: int = 0,
    lane: Lane = Lane.INTERACTIVE,
) -> Prediction:
    """An unsaved row: succeeded from the cache hit when the same model version answered this text before
    (started and finished at the moment it was created: the cache answers at once)."""
    now = timezone.now()
    prediction = Prediction(
        owner=owner,
        batch=batch,
        position=position,
        lane=lane,
        text=text,
        text_sha256=digest,
        model_name=model_name,
        model_version=version,
        request_id=current_request_id() or "",
        created_at=now,
        review_sample=random.random() < settings.REVIEW_SAMPLE_RATE,
    )
    if hit is not None:
        prediction.status = PredictionStatus.SUCCEEDED
        prediction.cached = True
        prediction.started_at = prediction.finished_at = now
        for field in CACHED_FIELDS:
            setattr(prediction, field, hit.get(field))
    return prediction


def prediction_create(*, owner: User, text: str, model_name: str) -> Prediction:
    """Save one prediction; queue it for a worker after commit unless the cache answered it.
    Raises QueueFull, storing nothing, when MAX_QUEUED predictions are already in flight."""
    queue_admit(adding=1)
    version = model_version_or_blank(model_name)
    digest = text_sha256(text)
    hit = result_cache_get(model_name, version, digest) if version else None
    prediction = _prediction_build(
        owner=owner, text=text, digest=digest, model_name=model_name, version=version, hit=hit
    )
    if not prediction.cached:  # marked as published in the INSERT itself: no UPDATE after publishing
        prediction.task_id, prediction.published_at = str(uuid.uuid4()), timezone.now()
    prediction_insert(prediction)  # in autocommit, on_commit runs at once, inside a transaction after it
    if not prediction.cached:
        transaction.on_commit(lambda: prediction_publish(prediction))
    return prediction


def batch_create(*, owner: User, texts: Sequence[str], model_name: str) -> Batch:
    """Save a batch and one prediction per text; uncached ones are queued in chunks after commit.
    Raises QueueFull, storing nothing, when the batch would take the queue over MAX_QUEUED.

    Each chunk's task id is chosen before the INSERT, which marks the rows as published: nothing is
    written after publishing, so a worker never finds its rows locked by that write (it skips
    locked rows) and a batch costs one INSERT whatever its number of chunks.
    """
    queue_admit(adding=len(texts), batch=True)
    version = model_version_or_blank(model_name)
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
                lane=Lane.BULK,
                hit=hits.get(digests[i]),
            )
            for i, text in enumerate(texts)
        ]
        queued = [row for row in rows if not row.cached]
        turns_take(queued, lane=Lane.BULK, owner_id=owner.pk)
        now = timezone.now()
        chunk = settings.PUBLISH_CHUNK_ROWS
        chunks = [(str(uuid.uuid4()), queued[start : start + chunk]) for start in range(0, len(queued), chunk)]
        for task_id, members in chunks:
            for row in members:
                row.task_id, row.published_at = task_id, now
        Prediction.objects.bulk_create(rows, batch_size=500)
        if chunks:
            sends = [(task_id, [row.pk for row in members], model_name) for task_id, members in chunks]
            transaction.on_commit(lambda: chunks_send(sends))
    return batch
