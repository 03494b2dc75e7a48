"""Reads: who may see which predictions, and the list filters."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, QuerySet

from predictions.models import FINISHED_STATUSES, Batch, IdempotencyKey, Prediction, PredictionStatus


def sees_everyones(user, model_name: str) -> bool:
    """Whether the API shows this user every owner's rows of a model: only to those the admin shows them to,
    staff with the view or change permission (the reviewers group, superusers). is_staff alone is not enough."""
    if not (user.is_staff and user.is_active):
        return False
    return user.has_perm(f"predictions.view_{model_name}") or user.has_perm(f"predictions.change_{model_name}")


def predictions_visible_to(user) -> QuerySet[Prediction]:
    """Users see their own predictions; reviewers and superusers see everyone's."""
    queryset = Prediction.objects.all()
    return queryset if sees_everyones(user, "prediction") else queryset.filter(owner=user)


def batches_visible_to(user) -> QuerySet[Batch]:
    queryset = Batch.objects.all()
    return queryset if sees_everyones(user, "batch") else queryset.filter(owner=user)


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


def predictions_purgeable(*, created_before: datetime, redact: bool) -> QuerySet[Prediction]:
    """Finished predictions created before `created_before` (when redacting, those not redacted yet).

    Queued and running rows are never purged: a worker may be about to read their text.
    """
    queryset = Prediction.objects.filter(created_at__lt=created_before, status__in=FINISHED_STATUSES)
    return queryset.filter(redacted_at__isnull=True) if redact else queryset


def prediction_counts_by_status_and_model() -> list[tuple[str, str, int]]:
    """(status, model name, rows) for each pair present, in one GROUP BY over the table (for /metrics)."""
    return list(Prediction.objects.order_by().values_list("status", "model_name").annotate(rows=Count("pk")))


def predictions_in_flight_count() -> int:
    """Predictions accepted and not finished (queued or running): the depth MAX_QUEUED bounds."""
    return Prediction.objects.filter(status__in=[PredictionStatus.QUEUED, PredictionStatus.RUNNING]).count()


def idempotency_key_get(*, owner, key: str, endpoint: str) -> IdempotencyKey | None:
    """The stored first response for this user's key on this endpoint, expired or not."""
    return IdempotencyKey.objects.filter(owner=owner, key=key, endpoint=endpoint).first()
