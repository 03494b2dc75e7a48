"""Reads: who may see which predictions, and the list filters."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from predictions.models import Batch, Prediction


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


def prediction_counts_by_status_and_model() -> list[tuple[str, str, int]]:
    """(status, model name, rows) for each pair present, in one GROUP BY over the table (for /metrics)."""
    return list(Prediction.objects.order_by().values_list("status", "model_name").annotate(rows=Count("pk")))
