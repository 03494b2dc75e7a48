"""How a prediction is made: the business logic that views, tasks and commands share.

Writes go through these functions only. Each state change is a conditional update on the row
(``filter(id=…, status=…).update(…)``), so a task delivered twice changes nothing the second time.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from predictions.cache import result_cache_get, result_cache_set_many
from predictions.models import FINISHED_STATUSES, Batch, Prediction, PredictionStatus, text_sha256
from predictions.registry import classifier_get, model_version

logger = logging.getLogger(__name__)


def _result_fields(result: dict) -> dict:
    return {
        "label": result["label"],
        "score": result["score"],
        "scores": result["scores"],
        "labels": result.get("labels") or [],
    }


def _prediction_build(*, owner, text: str, model_name: str, version: str, batch=None, position: int = 0) -> Prediction:
    """An unsaved row: succeeded from the cache when the same model version answered this text before."""
    digest = text_sha256(text)
    prediction = Prediction(
        owner=owner,
        batch=batch,
        position=position,
        text=text,
        text_sha256=digest,
        model_name=model_name,
        model_version=version,
    )
    hit = result_cache_get(model_name, version, digest)
    if hit is not None:
        now = timezone.now()
        prediction.status = PredictionStatus.SUCCEEDED
        prediction.cached = True
        prediction.started_at = prediction.finished_at = now
        for field, value in _result_fields(hit).items():
            setattr(prediction, field, value)
    return prediction


def prediction_create(*, owner, text: str, model_name: str) -> Prediction:
    """Save one prediction; queue it for a worker after commit unless the cache answered it."""
    prediction = _prediction_build(owner=owner, text=text, model_name=model_name, version=model_version(model_name))
    with transaction.atomic():
        prediction.save()
        if not prediction.cached:
            transaction.on_commit(lambda: predictions_publish([prediction.pk]))
    return prediction


def batch_create(*, owner, texts: Sequence[str], model_name: str) -> Batch:
    """Save a batch and one prediction per text; uncached ones are queued in chunks after commit."""
    version = model_version(model_name)
    with transaction.atomic():
        batch = Batch.objects.create(owner=owner, model_name=model_name, size=len(texts))
        rows = [
            _prediction_build(owner=owner, text=text, model_name=model_name, version=version, batch=batch, position=i)
            for i, text in enumerate(texts)
        ]
        Prediction.objects.bulk_create(rows, batch_size=500)
        queued = list(
            Prediction.objects.filter(batch=batch, status=PredictionStatus.QUEUED)
            .order_by("position")
            .values_list("pk", flat=True)
        )
        if queued:
            transaction.on_commit(lambda: predictions_publish(queued))
    return batch


def predictions_publish(prediction_ids: Sequence[int]) -> None:
    """Send the run task for these rows in chunks of BATCH_CHUNK_SIZE.

    A broker failure is logged, not raised: the rows stay queued in the database, which is the
    source of truth, and are published again by the sweeper.
    """
    from predictions.tasks import predictions_run_task

    chunk = settings.BATCH_CHUNK_SIZE
    for start in range(0, len(prediction_ids), chunk):
        ids = list(prediction_ids[start : start + chunk])
        try:
            result = predictions_run_task.apply_async(args=[ids])
        except Exception as exc:  # broker down: the rows wait for the sweeper
            logger.error("could not publish %d prediction(s) (%s): %s", len(ids), type(exc).__name__, exc)
            continue
        Prediction.objects.filter(pk__in=ids, status=PredictionStatus.QUEUED).update(task_id=result.id)


def predictions_run(prediction_ids: Iterable[int], *, task_id: str = "") -> dict[str, int]:
    """Run the model on the unfinished rows among these ids and store each result.

    Finished rows are skipped (idempotent). A row left `running` by a killed worker is taken again.
    If a batch forward pass fails, its texts are retried one by one so a bad text fails only its row.
    """
    now = timezone.now()
    pending = list(
        Prediction.objects.filter(pk__in=list(prediction_ids))
        .exclude(status__in=FINISHED_STATUSES)
        .only("pk", "text", "text_sha256", "model_name")
    )
    if not pending:
        return {"succeeded": 0, "failed": 0, "skipped": len(list(prediction_ids))}
    Prediction.objects.filter(pk__in=[p.pk for p in pending]).exclude(status__in=FINISHED_STATUSES).update(
        status=PredictionStatus.RUNNING, started_at=now, attempts=F("attempts") + 1, task_id=task_id
    )
    by_model: dict[str, list[Prediction]] = defaultdict(list)
    for prediction in pending:
        by_model[prediction.model_name].append(prediction)
    counts = {"succeeded": 0, "failed": 0, "skipped": 0}
    for model_name, rows in by_model.items():
        for key, value in _rows_run(model_name, rows).items():
            counts[key] += value
    return counts


def _rows_run(model_name: str, rows: list[Prediction]) -> dict[str, int]:
    from predictions.inference import ModelLoadError

    try:
        classifier = classifier_get(model_name)
    except (ModelLoadError, KeyError) as exc:
        return _rows_fail(rows, f"model {model_name!r} could not be loaded: {exc}")
    texts = [row.text for row in rows]
    try:
        results: list = classifier.predict(texts, batch_size=settings.INFERENCE_BATCH_SIZE)
    except Exception:
        logger.warning("batch of %d failed for %s; retrying texts one by one", len(rows), model_name, exc_info=True)
        results = []
        for text in texts:
            try:
                results.append(classifier.predict([text])[0])
            except Exception as exc:
                results.append(exc)
    finished = timezone.now()
    counts = {"succeeded": 0, "failed": 0, "skipped": 0}
    cache_entries = {}
    with transaction.atomic():
        for row, result in zip(rows, results, strict=True):
            unfinished = Prediction.objects.filter(pk=row.pk).exclude(status__in=FINISHED_STATUSES)
            if isinstance(result, Exception):
                updated = unfinished.update(
                    status=PredictionStatus.FAILED,
                    error=f"{type(result).__name__}: {result}"[:2000],
                    finished_at=finished,
                    model_version=classifier.version,
                )
                counts["failed" if updated else "skipped"] += 1
                continue
            fields = {"label": result.label, "score": result.score, "scores": result.scores, "labels": result.labels}
            updated = unfinished.update(
                status=PredictionStatus.SUCCEEDED,
                model_version=classifier.version,
                finished_at=finished,
                error="",
                **fields,
            )
            counts["succeeded" if updated else "skipped"] += 1
            cache_entries[(model_name, classifier.version, row.text_sha256)] = fields
    result_cache_set_many(cache_entries)
    return counts


def _rows_fail(rows: Sequence[Prediction], error: str) -> dict[str, int]:
    updated = (
        Prediction.objects.filter(pk__in=[r.pk for r in rows])
        .exclude(status__in=FINISHED_STATUSES)
        .update(status=PredictionStatus.FAILED, error=error[:2000], finished_at=timezone.now())
    )
    return {"succeeded": 0, "failed": updated, "skipped": len(rows) - updated}


def prediction_wait(prediction: Prediction, *, timeout: float) -> Prediction:
    """Poll the row until it is finished or `timeout` seconds pass; returns the fresh row."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not prediction.is_finished and time.monotonic() < deadline:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.1)
        prediction.refresh_from_db()
    return prediction
