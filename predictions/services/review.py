"""Reviewers' corrections and notes, each recorded in the prediction's review trail."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from predictions.models import Prediction, PredictionReview

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def prediction_review(*, prediction: Prediction, reviewer: User, corrected_label: str, note: str) -> None:
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


def predictions_mark_reviewed(*, queryset: QuerySet[Prediction], reviewer: User) -> int:
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
