"""The sweeper: the row is the source of truth, so work whose message was lost is sent again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerDown

from mlsite.celery import app
from predictions.models import Prediction, PredictionStatus
from predictions.services import worker
from predictions.tasks import predictions_run_task

pytestmark = pytest.mark.django_db


def test_a_prediction_submitted_while_the_broker_is_down_is_saved_and_answered_202(api, monkeypatch):
    def down(*args, **kwargs):
        raise BrokerDown("[Errno 111] Connection refused")

    monkeypatch.setattr(predictions_run_task, "apply_async", down)
    response = api.post("/api/v1/predictions/", {"text": "good film"})
    assert response.status_code == 202
    row = Prediction.objects.get()
    assert row.status == PredictionStatus.QUEUED
    assert row.published_at is None


def test_the_sweeper_republishes_unpublished_and_stale_rows_and_they_finish(owner, published):
    old = timezone.now() - timedelta(minutes=10)
    never = Prediction.objects.create(owner=owner, text="good", model_name="sentiment")
    stale = Prediction.objects.create(owner=owner, text="bad", model_name="sentiment", published_at=old)
    fresh = Prediction.objects.create(owner=owner, text="ok", model_name="sentiment", published_at=timezone.now())
    Prediction.objects.filter(pk=never.pk).update(created_at=old)
    result = worker.predictions_sweep(queued_after=120, running_after=600)
    assert result == {"requeued_running": 0, "republished": 2}
    assert published == [[never.pk, stale.pk]]
    statuses = dict(Prediction.objects.values_list("pk", "status"))
    assert statuses[never.pk] == statuses[stale.pk] == "succeeded"
    assert fresh.pk not in published[0]  # not resent (a worker may still take it along in a batch)


def test_a_row_stuck_running_is_requeued_and_run_once_more(owner, published):
    row = Prediction.objects.create(
        owner=owner,
        text="good",
        model_name="sentiment",
        status=PredictionStatus.RUNNING,
        started_at=timezone.now() - timedelta(hours=1),
        attempts=1,
    )
    recent = Prediction.objects.create(
        owner=owner, text="bad", model_name="sentiment", status=PredictionStatus.RUNNING, started_at=timezone.now()
    )
    call_command("sweep", "--running-after", "600")
    row.refresh_from_db()
    recent.refresh_from_db()
    assert row.status == PredictionStatus.SUCCEEDED
    assert row.attempts == 2
    assert recent.status == PredictionStatus.RUNNING
    assert published == [[row.pk]]


def test_finished_rows_are_never_swept(owner, published):
    Prediction.objects.create(owner=owner, text="done", model_name="sentiment", status=PredictionStatus.SUCCEEDED)
    assert worker.predictions_sweep(queued_after=0, running_after=0) == {"requeued_running": 0, "republished": 0}
    assert published == []


def test_beat_runs_the_sweeper(settings):
    assert settings.CELERY_BEAT_SCHEDULE["sweep-lost-predictions"]["task"] == "predictions.sweep"

    assert "predictions.sweep" in app.tasks
