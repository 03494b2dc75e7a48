"""Reads: who may see which predictions, and the list filters."""

from __future__ import annotations

from django.db.models import QuerySet

from predictions.models import Batch, IdempotencyKey, Prediction, PredictionStatus


def predictions_visible_to(user) -> QuerySet[Prediction]:
    """Users see their own predictions; staff see everyone's."""
    queryset = Prediction.objects.all()
    return queryset if user.is_staff else queryset.filter(owner=user)


def batches_visible_to(user) -> QuerySet[Batch]:
    queryset = Batch.objects.all()
    return queryset if user.is_staff else queryset.filter(owner=user)


def predictions_filter(queryset: QuerySet[Prediction], filters: dict) -> QuerySet[Prediction]:
    """Apply the validated list filters (status, model, label, batch, created range)."""
    lookups = {
        "status": "status",
        "model": "model_name",
        "label": "label",
        "batch": "batch_id",
        "created_after": "created_at__gte",
        "created_before": "created_at__lt",
    }
    return queryset.filter(**{lookups[key]: value for key, value in filters.items() if key in lookups})


def predictions_in_flight_count() -> int:
    """Predictions accepted and not finished (queued or running): the depth MAX_QUEUED bounds."""
    return Prediction.objects.filter(status__in=[PredictionStatus.QUEUED, PredictionStatus.RUNNING]).count()


def idempotency_key_get(*, owner, key: str, endpoint: str) -> IdempotencyKey | None:
    """The stored first response for this user's key on this endpoint, expired or not."""
    return IdempotencyKey.objects.filter(owner=owner, key=key, endpoint=endpoint).first()
