"""Shadow traffic: a candidate version answers a sampled share of live texts, on shadow workers.

After a worker writes live results and tells the waiting clients, SHADOW_RATE of the succeeded rows
of a model that has a shadowed version get a queued ShadowAnswer, and a shadow wake-up is published
to the shadow queue. Only shadow workers (WORKER_ROLE=shadow) consume it: processes of their own at
the lowest CPU priority, which start a pass only once the models' live traffic has paused
(SHADOW_LIVE_QUIET_MS), so shadow answers take only the time live work leaves (docs/architecture.md,
Shadow traffic). Answers are stored beside the client's, never returned; the admin compares them.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from predictions.models import ModelVersion, ModelVersionState, Prediction, PredictionStatus, ShadowAnswer
from predictions.registry import (
    active_versions_forget,
    served_models,
    shadow_classifier_get,
    shadow_version,
)
from predictions.services.backpressure import shadow_backlog
from predictions.services.dispatch import shadow_wakeup_send, shadow_wakeup_taken
from predictions.services.versions import VersionRefused

logger = logging.getLogger(__name__)

ANSWER_FIELDS = ("status", "label", "score", "scores", "labels", "margin", "error", "finished_at")
LIVE_POLL_SECONDS = 0.05  # how often a shadow worker waiting for live traffic to pause looks again


def shadow_sample(rows: Sequence[Prediction]) -> int:
    """Queue shadow answers for SHADOW_RATE of these freshly answered rows, while fewer than
    SHADOW_MAX_QUEUED wait (counted once a second per process, as MAX_QUEUED is); returns how many."""
    if settings.SHADOW_RATE <= 0:
        return 0
    answers = []
    for row in rows:
        if row.status != PredictionStatus.SUCCEEDED:
            continue
        shadow = shadow_version(row.model_name)
        if shadow is not None and random.random() < settings.SHADOW_RATE:
            answers.append(ShadowAnswer(prediction_id=row.pk, version_id=shadow[0]))
    if answers and settings.SHADOW_MAX_QUEUED:
        room = shadow_backlog.take(len(answers), settings.SHADOW_MAX_QUEUED)
        if room < len(answers):
            logger.info(
                "%d shadow answer(s) not sampled: SHADOW_MAX_QUEUED (%d) are waiting",
                len(answers) - room,
                settings.SHADOW_MAX_QUEUED,
            )
            answers = answers[:room]
    ShadowAnswer.objects.bulk_create(answers, ignore_conflicts=True)  # a row re-run: answered once per version
    if answers:
        transaction.on_commit(shadow_wakeup_send)
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


def shadow_task_run() -> int:
    """The shadow task: answer the queued shadow texts of the models this worker serves for at most
    CLAIM_LOOP_SECONDS, then hand what is left to the next wake-up; returns how many were answered."""
    shadow_wakeup_taken()  # before the first claim: shadow work queued from now on wakes a worker again
    answered, finished = shadow_run(served_models(), deadline=time.monotonic() + settings.CLAIM_LOOP_SECONDS)
    if not finished:
        shadow_wakeup_send()
    return answered


def shadow_sweep() -> bool:
    """Run by the sweeper: wake a shadow worker if shadow answers are queued, or were left running by
    a worker that died (SWEEP_RUNNING_AFTER); a pending wake-up is not sent twice. True if any are."""
    stale = timezone.now() - timedelta(seconds=settings.SWEEP_RUNNING_AFTER)
    waiting = ShadowAnswer.objects.filter(
        Q(status=PredictionStatus.QUEUED) | Q(status=PredictionStatus.RUNNING, started_at__lt=stale)
    ).exists()
    if waiting:
        shadow_wakeup_send()
    return waiting


def live_work_recent(models: Sequence[str], *, quiet_ms: int) -> bool:
    """Whether a live row of these models is queued or under way (on any worker), or was submitted in
    the last `quiet_ms`: traffic that has not paused."""
    since = timezone.now() - timedelta(milliseconds=quiet_ms)
    return Prediction.objects.filter(
        Q(status__in=(PredictionStatus.QUEUED, PredictionStatus.RUNNING)) | Q(created_at__gt=since),
        model_name__in=list(models),
    ).exists()


def shadow_run(models: Sequence[str], *, deadline: float) -> tuple[int, bool]:
    """Answer queued shadow texts of these models pass by pass until none is left or the deadline;
    returns how many were answered, and whether none is left. With SHADOW_LIVE_QUIET_MS, each pass
    starts only once live traffic of these models has paused that long, none of it queued or running."""
    answered = 0
    while True:
        while settings.SHADOW_LIVE_QUIET_MS and live_work_recent(models, quiet_ms=settings.SHADOW_LIVE_QUIET_MS):
            if time.monotonic() >= deadline:
                return answered, False
            time.sleep(LIVE_POLL_SECONDS)
        if time.monotonic() >= deadline:
            return answered, False
        answers = shadow_answers_claim(models, limit=settings.PASS_MAX_TEXTS)
        if not answers:
            return answered, True
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
    them with the reviewers' labels (shadow workers give them); returns how many."""
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
    if answers:
        transaction.on_commit(shadow_wakeup_send)
    return len(answers)
