"""Figures for the admin overview page: volume per day and status, labels per model, errors, latency."""

from __future__ import annotations

import math
from datetime import timedelta

from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from predictions.models import FINISHED_STATUSES, Prediction, PredictionStatus

LATENCY_SAMPLE = 10_000


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of a list (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def overview_figures(*, days: int = 30) -> dict:
    since = timezone.now() - timedelta(days=days)
    today = timezone.localdate()
    per_day: dict[str, dict[str, int]] = {(today - timedelta(days=n)).isoformat(): {} for n in range(days - 1, -1, -1)}
    recent = Prediction.objects.filter(created_at__gte=since)
    for day, status, n in (
        recent.annotate(day=TruncDate("created_at"))
        .values_list("day", "status")
        .annotate(n=Count("pk"))
        .order_by("day")
    ):
        if day.isoformat() in per_day:
            per_day[day.isoformat()][status] = n
    per_status = dict(Prediction.objects.values_list("status").annotate(n=Count("pk")).order_by())
    labels: dict[str, list[tuple[str, int]]] = {}
    for model_name, label, n in (
        Prediction.objects.filter(status=PredictionStatus.SUCCEEDED)
        .values_list("model_name", "label")
        .annotate(n=Count("pk"))
        .order_by("model_name", "-n")
    ):
        labels.setdefault(model_name, []).append((label, n))
    finished = per_status.get(PredictionStatus.SUCCEEDED, 0) + per_status.get(PredictionStatus.FAILED, 0)
    latencies = [
        (done - created).total_seconds()  # type: ignore[operator]  # finished_at__isnull=False: never None
        for created, done in Prediction.objects.filter(status__in=FINISHED_STATUSES, finished_at__isnull=False)
        .order_by("-pk")
        .values_list("created_at", "finished_at")[:LATENCY_SAMPLE]
    ]
    return {
        "days": days,
        "per_day": sorted(per_day.items()),
        "per_status": [(status, per_status.get(status, 0)) for status in PredictionStatus.values],
        "labels": sorted(labels.items()),
        "total": sum(per_status.values()),
        "error_rate": per_status.get(PredictionStatus.FAILED, 0) / finished if finished else None,
        "latency_sample": len(latencies),
        "latency_mean": sum(latencies) / len(latencies) if latencies else None,
        "latency_p95": percentile(latencies, 0.95),
    }


def wilson_interval(successes: int, trials: int, *, z: float = 1.96) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of a proportion (sound near 0 and 1 and for small samples)."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
