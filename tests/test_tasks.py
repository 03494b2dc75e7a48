"""The run task and the service behind it: idempotent, isolating failures, retrying only transient errors."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from predictions import services
from predictions.models import Prediction, PredictionStatus
from predictions.tasks import TRANSIENT_ERRORS, predictions_run_task

pytestmark = pytest.mark.django_db


def queued(owner, *texts: str, model: str = "sentiment") -> list[Prediction]:
    return [
        Prediction.objects.create(
            owner=owner, text=t, text_sha256="x", model_name=model, status=PredictionStatus.QUEUED
        )
        for t in texts
    ]


def test_a_finished_row_is_never_run_again(owner, monkeypatch):
    [row] = queued(owner, "good film")
    assert services.predictions_run([row.pk]) == {"succeeded": 1, "failed": 0, "skipped": 0}
    row.refresh_from_db()
    first = (row.label, row.scores, row.finished_at, row.attempts)
    assert services.predictions_run([row.pk]) == {"succeeded": 0, "failed": 0, "skipped": 1}
    row.refresh_from_db()
    assert (row.label, row.scores, row.finished_at, row.attempts) == first


def test_a_row_left_running_by_a_killed_worker_is_taken_again(owner):
    [row] = queued(owner, "bad plot")
    Prediction.objects.filter(pk=row.pk).update(status=PredictionStatus.RUNNING, attempts=1)
    services.predictions_run([row.pk])
    row.refresh_from_db()
    assert row.status == PredictionStatus.SUCCEEDED and row.attempts == 2


def test_a_text_that_breaks_the_model_fails_only_its_own_row(owner, monkeypatch):
    from predictions.registry import classifier_get

    rows = queued(owner, "good film", "POISON", "bad plot")
    classifier = classifier_get("sentiment")
    real_predict = classifier.predict

    def predict(texts, **kwargs):
        if "POISON" in texts:
            raise RuntimeError("the model choked")
        return real_predict(texts, **kwargs)

    monkeypatch.setattr(classifier, "predict", predict)
    assert services.predictions_run([r.pk for r in rows]) == {"succeeded": 2, "failed": 1, "skipped": 0}
    statuses = {r.text: (r.status, r.error) for r in Prediction.objects.all()}
    assert statuses["good film"] == (PredictionStatus.SUCCEEDED, "")
    assert statuses["bad plot"] == (PredictionStatus.SUCCEEDED, "")
    assert statuses["POISON"] == (PredictionStatus.FAILED, "RuntimeError: the model choked")


def test_a_model_that_cannot_load_fails_its_rows_with_the_reason(owner, settings, tmp_path):
    rows = queued(owner, "a", "b")
    settings.MLSITE_MODELS = {**settings.MLSITE_MODELS, "sentiment": f"path:{tmp_path}"}
    assert services.predictions_run([r.pk for r in rows])["failed"] == 2
    assert all("could not be loaded" in r.error for r in Prediction.objects.all())


def test_rows_of_several_models_in_one_task_each_get_their_own_model(owner):
    rows = queued(owner, "good", model="sentiment") + queued(owner, "joy", model="emotions")
    services.predictions_run([r.pk for r in rows])
    by_model = {r.model_name: r for r in Prediction.objects.all()}
    assert set(by_model["sentiment"].scores) == {"negative", "positive"}
    assert set(by_model["emotions"].scores) == {"joy", "anger", "fear", "neutral"}


def test_the_task_is_acked_late_and_requeued_if_its_worker_dies():
    assert predictions_run_task.acks_late is True
    assert predictions_run_task.reject_on_worker_lost is True


def test_transient_database_errors_are_retried_and_others_are_not(owner, monkeypatch, celery_eager):
    assert OperationalError in TRANSIENT_ERRORS and RuntimeError not in TRANSIENT_ERRORS
    calls = []

    def flaky(ids, task_id=""):
        calls.append(ids)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return {"succeeded": 1, "failed": 0, "skipped": 0}

    monkeypatch.setattr(services, "predictions_run", flaky)
    monkeypatch.setattr(predictions_run_task, "retry_backoff", False)
    monkeypatch.setattr(predictions_run_task, "default_retry_delay", 0)
    celery_eager.conf.task_eager_propagates = False  # let the eager run retry instead of raising Retry
    result = predictions_run_task.apply(args=[[1]])
    assert result.get() == {"succeeded": 1, "failed": 0, "skipped": 0} and len(calls) == 2

    monkeypatch.setattr(services, "predictions_run", lambda ids, task_id="": (_ for _ in ()).throw(ValueError("bug")))
    with pytest.raises(ValueError):
        predictions_run_task.apply(args=[[1]]).get()
