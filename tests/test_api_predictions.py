"""POST/GET /api/v1/predictions/: the happy path, the cache, waiting, listing and visibility."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pytest
from django.db.models.signals import post_save, pre_save
from django.forms.models import model_to_dict
from django.utils import timezone
from rest_framework import serializers
from rest_framework.test import APIRequestFactory

from predictions.api.serializers import PredictionSerializer
from predictions.models import Prediction, PredictionStatus
from predictions.services.sql import prediction_insert
from predictions.services.submission import _prediction_build
from predictions.tasks import predictions_run_task
from tests.factories import tiny_bert_save

pytestmark = pytest.mark.django_db


def test_a_posted_text_is_saved_queued_and_answered_202_with_its_location(api, monkeypatch):
    sent = []  # the task is only recorded, not run, so the row stays queued
    monkeypatch.setattr(
        predictions_run_task,
        "apply_async",
        lambda args, task_id=None, **_: sent.append((args[0], task_id)) or SimpleNamespace(id=task_id),
    )
    response = api.post("/api/v1/predictions/", {"text": "a gorgeous, witty film"})
    assert response.status_code == 202, response.json()
    body = response.json()
    assert response["Location"] == body["url"] == f"http://testserver/api/v1/predictions/{body['id']}/"  # absolute
    assert body["status"] == "queued"
    assert body["text"] == "a gorgeous, witty film"
    assert body["model"]["name"] == "sentiment"
    assert len(body["model"]["version"]) == 12
    [(sent_ids, task_id)] = sent
    assert sent_ids == [body["id"]]
    row = Prediction.objects.get(pk=body["id"])  # the row records the task id it was published under
    assert row.status == PredictionStatus.QUEUED
    assert row.task_id == task_id
    assert row.published_at
    assert row.text_sha256


def test_the_worker_fills_label_score_and_every_label_score(api):
    created = api.post("/api/v1/predictions/", {"text": "good film"}).json()
    body = api.get(f"/api/v1/predictions/{created['id']}/").json()
    assert body["status"] == "succeeded"
    assert body["label"] in ("negative", "positive")
    assert set(body["scores"]) == {"negative", "positive"}
    assert body["score"] == max(body["scores"].values())
    assert body["cached"] is False
    assert body["error"] == ""
    assert body["started_at"]
    assert body["finished_at"]


@pytest.mark.django_db(transaction=True)
def test_wait_answers_200_with_the_finished_result(api):
    response = api.post("/api/v1/predictions/?wait=5", {"text": "bad plot"})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"


def test_a_repeated_text_is_served_from_the_cache_without_a_task(api, published):
    first = api.post("/api/v1/predictions/", {"text": "the acting was great"})
    assert first.status_code == 202
    assert len(published) == 1
    second = api.post("/api/v1/predictions/", {"text": "the acting was great"})
    assert second.status_code == 200
    body = second.json()
    assert body["cached"] is True
    assert body["status"] == "succeeded"
    assert len(published) == 1  # no second task
    original = Prediction.objects.get(pk=first.json()["id"])
    assert body["label"] == original.label
    assert body["scores"] == pytest.approx(original.scores)
    assert body["id"] != original.pk
    assert Prediction.objects.count() == 2


def test_the_cache_is_per_model(api, published):
    api.post("/api/v1/predictions/", {"text": "happy joy", "model": "sentiment"})
    response = api.post("/api/v1/predictions/", {"text": "happy joy", "model": "emotions"})
    assert response.status_code == 202
    assert len(published) == 2
    body = api.get(response["Location"]).json()
    assert body["model"]["name"] == "emotions"
    assert set(body["scores"]) == {"joy", "anger", "fear", "neutral"}
    assert isinstance(body["labels"], list)


def test_a_cached_answer_starts_and_finishes_when_it_is_created_never_before(api, owner):
    """created ≤ started ≤ finished for every row: a cache hit's three are the same moment, so the admin's
    duration is 0.00 s, never negative; a single text and a batch's rows alike."""
    api.post("/api/v1/predictions/", {"text": "the plot was thin"})  # fills the cache
    single = api.post("/api/v1/predictions/", {"text": "the plot was thin"}).json()
    batch = api.post("/api/v1/batches/", {"texts": ["the plot was thin", "the plot was thin"]}).json()
    rows = Prediction.objects.filter(cached=True)
    assert {row.pk for row in rows} == {single["id"], *(r["id"] for r in batch["results"])}
    for row in rows:
        assert row.created_at == row.started_at == row.finished_at
        assert row.duration_seconds == 0
    assert single["created_at"] == single["started_at"] == single["finished_at"]
    for row in Prediction.objects.filter(cached=False):
        assert row.created_at <= row.started_at <= row.finished_at


def test_a_retrained_model_version_does_not_reuse_cached_answers(
    api, published, settings, tmp_path, tiny_sentiment_dir
):
    api.post("/api/v1/predictions/", {"text": "dull plot"})
    retrained = tiny_bert_save(tmp_path / "v2", labels=["negative", "positive"], seed=7)
    assert (retrained / "model.safetensors").read_bytes() != (tiny_sentiment_dir / "model.safetensors").read_bytes()
    settings.MLSITE_MODELS = {**settings.MLSITE_MODELS, "sentiment": f"path:{retrained}"}
    response = api.post("/api/v1/predictions/", {"text": "dull plot"})
    assert response.status_code == 202
    assert len(published) == 2
    shutil.rmtree(retrained)


def test_users_see_only_their_own_predictions_and_staff_see_all(api, stranger_api, staff_api):
    mine = api.post("/api/v1/predictions/", {"text": "mine"}).json()
    theirs = stranger_api.post("/api/v1/predictions/", {"text": "theirs"}).json()
    assert stranger_api.get(f"/api/v1/predictions/{mine['id']}/").status_code == 404
    assert [p["id"] for p in api.get("/api/v1/predictions/").json()["results"]] == [mine["id"]]
    assert {p["id"] for p in staff_api.get("/api/v1/predictions/").json()["results"]} == {mine["id"], theirs["id"]}


def test_anonymous_requests_get_401(anonymous_api):
    for response in (
        anonymous_api.get("/api/v1/predictions/"),
        anonymous_api.post("/api/v1/predictions/", {"text": "x"}),
        anonymous_api.get("/api/v1/predictions/1/"),
        anonymous_api.get("/api/v1/models/"),
        anonymous_api.post("/api/v1/batches/", {"texts": ["x"]}),
    ):
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"
    assert Prediction.objects.count() == 0


def test_the_list_filters_by_status_model_label_batch_and_created_range(api):
    a = api.post("/api/v1/predictions/", {"text": "good"}).json()
    b = api.post("/api/v1/predictions/", {"text": "joy", "model": "emotions"}).json()
    batch = api.post("/api/v1/batches/", {"texts": ["x", "y"]}).json()
    Prediction.objects.filter(pk=a["id"]).update(status=PredictionStatus.FAILED)

    def ids(query: str) -> set[int]:
        response = api.get(f"/api/v1/predictions/?{query}")
        assert response.status_code == 200, response.json()
        return {p["id"] for p in response.json()["results"]}

    assert ids("status=failed") == {a["id"]}
    assert ids("model=emotions") == {b["id"]}
    label = Prediction.objects.get(pk=b["id"]).label
    assert b["id"] in ids(f"label={label}")
    assert ids(f"batch={batch['id']}") == {r["id"] for r in batch["results"]}
    assert ids("created_after=2000-01-01T00:00:00Z") == {a["id"], b["id"], *(r["id"] for r in batch["results"])}
    assert ids("created_before=2000-01-01T00:00:00Z") == set()
    bad = api.get("/api/v1/predictions/?status=done")
    assert bad.status_code == 400
    assert "status" in bad.json()


def test_the_list_is_paginated(api, settings):
    for i in range(3):
        api.post("/api/v1/predictions/", {"text": f"text {i}"})
    body = api.get("/api/v1/predictions/?page=1").json()
    assert body["count"] == 3
    assert len(body["results"]) == 3
    assert "next" in body


def test_a_model_whose_files_are_gone_fails_the_row_with_the_reason_not_a_500(api, settings, tmp_path):
    settings.MLSITE_MODELS = {**settings.MLSITE_MODELS, "sentiment": f"path:{tmp_path / 'missing'}"}
    response = api.post("/api/v1/predictions/", {"text": "good film"})
    assert response.status_code == 202
    body = api.get(response["Location"]).json()
    assert body["status"] == "failed"
    assert "could not be loaded" in body["error"]


def test_the_fast_prediction_json_equals_what_the_declared_fields_produce(api, owner):
    api.post("/api/v1/predictions/", {"text": "good film"})
    api.post("/api/v1/batches/", {"texts": ["joy"], "model": "emotions"})
    queued = Prediction.objects.create(owner=owner, text="still queued", model_name="sentiment")
    request = APIRequestFactory().get("/")
    for prediction in [*Prediction.objects.exclude(pk=queued.pk), queued]:
        serializer = PredictionSerializer(prediction, context={"request": request})
        by_fields = serializers.ModelSerializer.to_representation(serializer, prediction)
        assert serializer.data == by_fields


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="on SQLite the insert is save() itself"
)
def test_the_prebuilt_insert_stores_what_save_would_store(api, owner):
    """services.sql.prediction_insert replaces Model.save() for a new single prediction: same columns,
    same values, and no save signal it would skip."""
    assert not pre_save.has_listeners(Prediction)
    assert not post_save.has_listeners(Prediction)
    api.post("/api/v1/predictions/", {"text": "good film"})  # fills the cache: the next builds are hits
    for hit in (None, {"label": "positive", "score": 0.9, "scores": {"positive": 0.9, "negative": 0.1}}):
        built = [
            _prediction_build(
                owner=owner, text="a film", digest="d" * 64, model_name="sentiment", version="v1", hit=hit
            )
            for _ in range(2)
        ]
        built[0].save()
        prediction_insert(built[1])
        assert built[1].pk
        assert not built[1]._state.adding
        assert built[1]._state.db == "default"
        for row in built:  # each row reads back exactly as built, through either path
            assert model_to_dict(Prediction.objects.get(pk=row.pk)) == model_to_dict(row)
        created = Prediction.objects.filter(pk__in=[row.pk for row in built]).values_list("created_at", flat=True)
        assert all(abs((moment - timezone.now()).total_seconds()) < 60 for moment in created)
