"""Reads: who may see which predictions, the list filters, and what a reprocess run selects and has done."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import Case, Count, F, Q, QuerySet, When

from predictions.models import (
    FINISHED_STATUSES,
    Batch,
    IdempotencyKey,
    Lane,
    ModelVersion,
    Prediction,
    PredictionResult,
    PredictionStatus,
    ReprocessRun,
    ShadowAnswer,
)
from predictions.overview import percentile

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


def sees_everyones(user: User | AnonymousUser, model_name: str) -> bool:
    """Whether the API shows this user every owner's rows of a model: only to those the admin shows them to,
    staff with the view or change permission (the reviewers group, superusers). is_staff alone is not enough."""
    if not (user.is_staff and user.is_active):
        return False
    return user.has_perm(f"predictions.view_{model_name}") or user.has_perm(f"predictions.change_{model_name}")


def predictions_visible_to(user: User) -> QuerySet[Prediction]:
    """Users see their own predictions; reviewers and superusers see everyone's."""
    queryset = Prediction.objects.all()
    return queryset if sees_everyones(user, "prediction") else queryset.filter(owner=user)


def batches_visible_to(user: User) -> QuerySet[Batch]:
    queryset = Batch.objects.all()
    return queryset if sees_everyones(user, "batch") else queryset.filter(owner=user)


def predictions_filter(queryset: QuerySet[Prediction], filters: Mapping[str, Any]) -> QuerySet[Prediction]:
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
    """Clients' predictions accepted and not finished (queued or running, interactive and bulk lanes):
    the depth MAX_QUEUED bounds. Re-runs (the background lane) are rows already stored, requeued by
    an operator: they do not count, so re-running the whole history never turns clients away."""
    return Prediction.objects.filter(
        status__in=[PredictionStatus.QUEUED, PredictionStatus.RUNNING], lane__lt=Lane.BACKGROUND
    ).count()


def shadow_backlog_count() -> int:
    """Shadow answers queued or running: the backlog SHADOW_MAX_QUEUED bounds (a partial index's rows)."""
    return ShadowAnswer.objects.filter(status__in=[PredictionStatus.QUEUED, PredictionStatus.RUNNING]).count()


def idempotency_key_get(*, owner: User, key: str, endpoint: str) -> IdempotencyKey | None:
    """The stored first response for this user's key on this endpoint, expired or not."""
    return IdempotencyKey.objects.filter(owner=owner, key=key, endpoint=endpoint).first()


# --- What a reprocess run selects, has left to do, and has done ---------------------------------------


class SelectionError(ValueError):
    """The selectors given to reprocess are missing or invalid; the message says which."""


def reprocess_selection(
    *,
    everything: bool = False,
    statuses: Sequence[str] = (),
    model: str = "",
    model_version: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    ids: Sequence[int] = (),
    batch: int | None = None,
) -> QuerySet[Prediction]:
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


def reprocess_pending(run: ReprocessRun, selection: QuerySet[Prediction]) -> tuple[list[int], int]:
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


def reprocess_summary(run: ReprocessRun) -> dict[str, int]:
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


def review_queue(*, model_name: str = "", model_version: str = "", sample: bool = False) -> QuerySet[Prediction]:
    """Finished answers no reviewer has seen: the most uncertain first (smallest margin; answers
    stored before margins were kept come last), or the random audit sample, oldest first, whose
    agreement rate is not biased by that ordering."""
    queryset = Prediction.objects.filter(status=PredictionStatus.SUCCEEDED, reviewed_at__isnull=True)
    if model_name:
        queryset = queryset.filter(model_name=model_name)
    if model_version:
        queryset = queryset.filter(model_version=model_version)
    if sample:
        return queryset.filter(review_sample=True).order_by("pk")
    return queryset.order_by(F("margin").asc(nulls_last=True), "pk")


def model_versions_seen(model_name: str, *, limit: int = 50) -> list[str]:
    """The versions of a model that answered predictions (the review queue's version filter)."""
    versions = (
        Prediction.objects.filter(model_name=model_name)
        .exclude(model_version="")
        .values_list("model_version", flat=True)
        .distinct()
        .order_by("model_version")
    )
    return list(versions[:limit])


def batch_figures(batch: Batch) -> dict[str, Any]:
    """A batch's rows per status and its timings from submission: first start, last finish, per-text
    latency percentiles and texts a second (one query for the counts, one for the finished rows' times)."""
    counts = dict(batch.predictions.values_list("status").annotate(n=Count("pk")).order_by())
    times = list(
        batch.predictions.filter(status__in=FINISHED_STATUSES, finished_at__isnull=False).values_list(
            "created_at", "started_at", "finished_at"
        )
    )
    finishes = [(created, finished) for created, _, finished in times if finished is not None]  # all: filtered above
    latencies = [(finished - created).total_seconds() for created, finished in finishes]
    starts = [started for _, started, _ in times if started is not None]
    last = max((finished for _, finished in finishes), default=None)
    wall = (last - batch.created_at).total_seconds() if last else None
    return {
        "per_status": [(status, counts.get(status, 0)) for status in PredictionStatus.values],
        "finished": len(times),
        "first_start": (min(starts) - batch.created_at).total_seconds() if starts else None,
        "last_finish": wall,
        "per_second": len(times) / wall if wall else None,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
    }


def reviewed_examples(model_name: str) -> Iterator[tuple[int, str, list[str], str]]:
    """(id, text, the model's labels, the reviewer's correction or "") of every reviewed answer of a
    model whose text is kept: one row per text, its latest review winning; read in chunks."""
    rows = (
        Prediction.objects.filter(
            model_name=model_name,
            status=PredictionStatus.SUCCEEDED,
            reviewed_at__isnull=False,
            redacted_at__isnull=True,
        )
        .order_by("text_sha256", "-reviewed_at", "-pk")
        .distinct("text_sha256")
        if connection.vendor == "postgresql"
        else Prediction.objects.filter(
            model_name=model_name,
            status=PredictionStatus.SUCCEEDED,
            reviewed_at__isnull=False,
            redacted_at__isnull=True,
        ).order_by("text_sha256", "-reviewed_at", "-pk")
    )
    seen: set[str] = set()
    for pk, digest, text, label, labels, corrected in rows.values_list(
        "pk", "text_sha256", "text", "label", "labels", "corrected_label"
    ).iterator(chunk_size=2000):
        if digest in seen:  # SQLite has no DISTINCT ON: the first of each text is its latest review
            continue
        seen.add(digest)
        yield pk, text, list(labels or ([label] if label else [])), corrected


def shadow_agreement(version: ModelVersion, *, disagreements: int = 20) -> dict[str, Any]:
    """How a shadowed version's answers compare with those the clients got: answered, agreeing, and the
    latest texts where the top labels differ (the prediction's current label; a re-run may change it)."""
    answers = ShadowAnswer.objects.filter(
        version=version, status=PredictionStatus.SUCCEEDED, origin=ShadowAnswer.Origin.LIVE
    )
    figures = answers.aggregate(
        answered=Count("pk"),
        agreeing=Count("pk", filter=Q(label=F("prediction__label"))),
    )
    figures["queued"] = ShadowAnswer.objects.filter(
        version=version, status=PredictionStatus.QUEUED, origin=ShadowAnswer.Origin.LIVE
    ).count()
    figures["disagreements"] = list(
        answers.exclude(label=F("prediction__label"))
        .select_related("prediction")
        .order_by("-pk")
        .values_list("prediction_id", "prediction__text", "prediction__label", "prediction__model_version", "label")[
            :disagreements
        ]
    )
    return figures


def reviewed_agreement(version: ModelVersion, *, disagreements: int = 20) -> dict[str, Any]:
    """A candidate against the reviewers: on the reviewed predictions it answered, how often its label
    is the reviewers' (the correction, or the answer they confirmed), and how often the answer the
    clients got was; and the latest texts where the candidate and the reviewers differ."""
    reviewer_label = Case(
        When(prediction__corrected_label="", then=F("prediction__label")), default=F("prediction__corrected_label")
    )
    answers = ShadowAnswer.objects.filter(
        version=version, status=PredictionStatus.SUCCEEDED, origin=ShadowAnswer.Origin.REVIEWED
    ).annotate(truth=reviewer_label)
    figures = answers.aggregate(
        answered=Count("pk"),
        candidate_right=Count("pk", filter=Q(label=F("truth"))),
        served_right=Count("pk", filter=Q(prediction__label=F("truth"))),
    )
    figures["queued"] = ShadowAnswer.objects.filter(
        version=version,
        status__in=(PredictionStatus.QUEUED, PredictionStatus.RUNNING),
        origin=ShadowAnswer.Origin.REVIEWED,
    ).count()
    figures["disagreements"] = list(
        answers.exclude(label=F("truth"))
        .order_by("-pk")
        .values_list("prediction_id", "prediction__text", "truth", "prediction__label", "label")[:disagreements]
    )
    return figures
