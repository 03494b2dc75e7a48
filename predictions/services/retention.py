"""Retention (manage.py purge_predictions): delete or redact old finished predictions, and their cache entries."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from predictions.cache import result_cache_delete_many
from predictions.models import FINISHED_STATUSES, Batch, Prediction, PredictionResult, PredictionReview
from predictions.selectors import predictions_purgeable

logger = logging.getLogger(__name__)

REDACTED_TEXT = "[redacted]"


def predictions_purge(
    *,
    older_than_days: int,
    redact: bool = False,
    dry_run: bool = False,
    batch_size: int = 1000,
    now: datetime | None = None,
    on_chunk: Callable[[int], None] = lambda n: None,
) -> dict[str, int]:
    """Delete (or, with `redact`, keep but redact) finished predictions created more than `older_than_days` ago.

    Deleting takes each row's result history and review trail with it, then the batches left empty.
    Redacting replaces the text with REDACTED_TEXT, clears its SHA-256 and the reviewers' free-text
    notes (they may quote it) and stamps `redacted_at`; labels, scores and who reviewed stay for audit.
    Either way the rows' result-cache entries (every model version they and their history were run
    under) are deleted, so the text can no longer be confirmed through the cache. Rows go in chunks
    of `batch_size`, each in its own short transaction, walked by primary key (bounded memory).
    Queued and running rows are left alone. With `dry_run`, nothing changes: the counts say what would.
    """
    moment = now or timezone.now()
    cutoff = moment - timedelta(days=older_than_days)
    selection = predictions_purgeable(created_before=cutoff, redact=redact)
    counts = {
        "predictions": 0,
        "history": 0,
        "reviews": 0,
        "batches": 0,
        "cache_keys": 0,
        "unfinished_left": Prediction.objects.filter(created_at__lt=cutoff)
        .exclude(status__in=FINISHED_STATUSES)
        .count(),
    }
    if dry_run:
        history = PredictionResult.objects.filter(prediction__in=selection)
        reviews = PredictionReview.objects.filter(prediction__in=selection)
        if redact:  # what would change: the notes that have something in them
            history, reviews = history.exclude(review_note=""), reviews.exclude(note="")
        counts.update(predictions=selection.count(), history=history.count(), reviews=reviews.count())
        if not redact:
            kept = Prediction.objects.exclude(pk__in=selection.values("pk")).filter(batch__isnull=False)
            counts["batches"] = (
                Batch.objects.filter(created_at__lt=cutoff).exclude(pk__in=kept.values("batch_id")).count()
            )
        return counts

    last_pk = 0
    while True:
        with transaction.atomic():
            rows = list(
                selection.filter(pk__gt=last_pk)
                .order_by("pk")
                .select_for_update()
                .values_list("pk", "model_name", "model_version", "text_sha256")[:batch_size]
            )
            if not rows:
                break
            last_pk = rows[-1][0]
            ids = [pk for pk, *_ in rows]
            digests = {pk: digest for pk, _, _, digest in rows}
            cache_entries = {(name, version, digest) for _, name, version, digest in rows if digest}
            history = PredictionResult.objects.filter(prediction_id__in=ids)
            for pk, name, version in history.values_list("prediction_id", "model_name", "model_version").distinct():
                if digests[pk]:
                    cache_entries.add((name, version, digests[pk]))
            reviews = PredictionReview.objects.filter(prediction_id__in=ids)
            if redact:
                counts["predictions"] += Prediction.objects.filter(pk__in=ids).update(
                    text=REDACTED_TEXT, text_sha256="", redacted_at=moment
                )
                Prediction.objects.filter(pk__in=ids).exclude(review_note="").update(review_note=REDACTED_TEXT)
                counts["history"] += history.exclude(review_note="").update(review_note=REDACTED_TEXT)
                counts["reviews"] += reviews.exclude(note="").update(note=REDACTED_TEXT)
            else:
                counts["history"] += history.delete()[0]
                counts["reviews"] += reviews.delete()[0]
                counts["predictions"] += Prediction.objects.filter(pk__in=ids).only("pk").delete()[0]
            # Inside the transaction: if the cache can't be cleared, this chunk is rolled back and the error raised.
            counts["cache_keys"] += result_cache_delete_many(cache_entries)
        on_chunk(len(ids))
    if not redact:
        emptied = Batch.objects.filter(created_at__lt=cutoff, predictions__isnull=True).order_by("pk")
        last_pk = 0
        while ids := list(emptied.filter(pk__gt=last_pk).values_list("pk", flat=True)[:batch_size]):
            last_pk = ids[-1]
            counts["batches"] += Batch.objects.filter(pk__in=ids, predictions__isnull=True).delete()[0]
    logger.info("purge (%s, older than %d days): %s", "redact" if redact else "delete", older_than_days, counts)
    return counts
