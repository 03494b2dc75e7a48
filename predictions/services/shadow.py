"""Shadow traffic: a candidate version answers a sampled share of live texts, in the workers' idle time.

After a worker writes live results, SHADOW_RATE of the succeeded rows of a model that has a shadowed
version get a queued ShadowAnswer. A worker runs them only when no live row of its models is queued,
one forward pass at a time, looking for live rows before each pass: live work waits at most one
shadow pass, as it waits for one bulk pass (docs/architecture.md, Shadow traffic). Answers are
stored beside the client's, never returned; the admin compares them.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from predictions.models import ModelVersion, ModelVersionState, Prediction, PredictionStatus, ShadowAnswer
from predictions.registry import active_versions_forget, shadow_classifier_get, shadow_version, shadow_work_pending
from predictions.services.dispatch import wakeup_send
from predictions.services.versions import VersionRefused

logger = logging.getLogger(__name__)

ANSWER_FIELDS = ("status", "label", "score", "scores", "labels", "margin", "error", "finished_at")


def shadow_sample(rows: Sequence[Prediction]) -> int:
    """Queue shadow answers for SHADOW_RATE of these freshly answered rows; returns how many."""
    if settings.SHADOW_RATE <= 0:
        return 0
    answers = []
    for row in rows:
        if row.status != PredictionStatus.SUCCEEDED:
            continue
        shadow = shadow_version(row.model_name)
        if shadow is not None and random.random() < settings.SHADOW_RATE:
            answers.append(ShadowAnswer(prediction_id=row.pk, version_id=shadow[0]))
    ShadowAnswer.objects.bulk_create(answers, ignore_conflicts=True)  # a row re-run: answered once per version
    return len(answers)


def shadow_answers_claim(models: Sequence[str], *, limit: int) -> list[ShadowAnswer]:
    """Mark up to `limit` queued shadow answers of these models running and return them, oldest first;
    answers left running by a worker that died (SWEEP_RUNNING_AFTER) are taken again."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.SWEEP_RUNNING_AFTER)
    with transaction.atomic():
        ids = list(
            ShadowAnswer.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(version__name__in=list(models))
            .filter(Q(status=PredictionStatus.QUEUED) | Q(status=PredictionStatus.RUNNING, started_at__lt=stale))
            .order_by("pk")
            .values_list("pk", flat=True)[:limit]
        )
        ShadowAnswer.objects.filter(pk__in=ids).update(status=PredictionStatus.RUNNING, started_at=now)
    return list(
        ShadowAnswer.objects.filter(pk__in=ids)
        .select_related("version", "prediction")
        .only("pk", "version__name", "version__source", "prediction__text", "prediction__model_name")
        .order_by("pk")
    )


def shadow_run(models: Sequence[str], *, live_waiting: Callable[[], bool], deadline: float) -> int:
    """Answer queued shadow texts pass by pass until none is left, live rows wait, or the deadline;
    returns how many were answered."""
    if not shadow_work_pending(list(models)):  # read with the active versions, not on every task
        return 0
    answered = 0
    while time.monotonic() < deadline and not live_waiting():
        answers = shadow_answers_claim(models, limit=settings.PASS_MAX_TEXTS)
        if not answers:
            break
        by_version: dict[int, list[ShadowAnswer]] = defaultdict(list)
        for answer in answers:
            by_version[answer.version_id].append(answer)
        for group in by_version.values():
            version = group[0].version
            finished = timezone.now()
            try:
                classifier = shadow_classifier_get(version.name, version.source)
                results: list = list(classifier.predict([a.prediction.text for a in group]))
            except Exception as exc:  # a version that can't load or run: its answers fail, saying why
                logger.warning("shadow version %s failed: %s", version, exc)
                results = [exc] * len(group)
            for answer, result in zip(group, results, strict=True):
                answer.finished_at = finished
                if isinstance(result, Exception):
                    answer.status, answer.error = PredictionStatus.FAILED, f"{type(result).__name__}: {result}"[:2000]
                    answer.label, answer.score, answer.scores, answer.labels, answer.margin = "", None, None, None, None
                else:
                    answer.status, answer.error = PredictionStatus.SUCCEEDED, ""
                    answer.label, answer.score, answer.scores = result.label, result.score, result.scores
                    answer.labels, answer.margin = result.labels, result.margin
            ShadowAnswer.objects.bulk_update(group, ANSWER_FIELDS)
            answered += len(group)
    return answered


def shadow_start(version: ModelVersion) -> ModelVersion | None:
    """Shadow `version` on live traffic from now on; the version shadowed before it stops (returned)."""
    if version.state == ModelVersionState.ACTIVE:
        raise VersionRefused(f"{version} is active: it answers all traffic already")
    with transaction.atomic():
        previous = ModelVersion.objects.select_for_update().filter(name=version.name, shadow=True).first()
        if previous is not None and previous.pk != version.pk:
            shadow_stop(previous)
        ModelVersion.objects.filter(pk=version.pk).update(shadow=True)
        transaction.on_commit(active_versions_forget)
    version.shadow = True
    return previous if previous is not None and previous.pk != version.pk else None


def shadow_stop(version: ModelVersion) -> int:
    """Stop shadowing `version`; its answers given are kept, those still queued are dropped (returned)."""
    with transaction.atomic():
        ModelVersion.objects.filter(pk=version.pk).update(shadow=False)
        dropped, _ = ShadowAnswer.objects.filter(version=version, status=PredictionStatus.QUEUED).delete()
        transaction.on_commit(active_versions_forget)
    version.shadow = False
    return dropped


def shadow_compare_on_reviews(version: ModelVersion, *, limit: int = 5000) -> int:
    """Queue `version`'s answers to the latest `limit` reviewed predictions of its model, to compare
    them with the reviewers' labels (workers give them in their idle time); returns how many."""
    reviewed = (
        Prediction.objects.filter(
            model_name=version.name,
            status=PredictionStatus.SUCCEEDED,
            reviewed_at__isnull=False,
            redacted_at__isnull=True,
        )
        .exclude(shadow_answers__version=version)
        .order_by("-reviewed_at")
        .values_list("pk", flat=True)[:limit]
    )
    answers = [ShadowAnswer(prediction_id=pk, version=version, origin=ShadowAnswer.Origin.REVIEWED) for pk in reviewed]
    ShadowAnswer.objects.bulk_create(answers, ignore_conflicts=True)
    transaction.on_commit(lambda: wakeup_send(version.name))  # a worker with nothing live to do takes them
    return len(answers)
