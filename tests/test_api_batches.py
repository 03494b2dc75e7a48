"""POST/GET /api/v1/batches/: one row per text, chunked tasks, results in input order."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from predictions.models import Batch, Prediction
from predictions.services import submission
from predictions.tasks import predictions_run_task

pytestmark = pytest.mark.django_db


def test_a_batch_saves_one_prediction_per_text_and_answers_in_input_order(api):
    texts = ["good film", "awful plot", "so dull", "love it"]
    response = api.post("/api/v1/batches/", {"texts": texts, "model": "sentiment"})
    assert response.status_code == 202
    body = response.json()
    assert response["Location"] == body["url"] == f"http://testserver/api/v1/batches/{body['id']}/"  # absolute
    detail = api.get(response["Location"]).json()
    assert [r["text"] for r in detail["results"]] == texts
    assert detail["counts"] == {"queued": 0, "running": 0, "succeeded": 4, "failed": 0}
    assert detail["finished"] is True
    assert detail["size"] == 4
    assert Prediction.objects.filter(batch_id=body["id"]).count() == 4


def test_a_batch_is_published_in_chunks_not_one_task_per_text(api, published, settings):
    settings.PUBLISH_CHUNK_ROWS = 3
    api.post("/api/v1/batches/", {"texts": [f"text number {i}" for i in range(7)]})
    assert [len(ids) for ids in published] == [3, 3, 1]


def test_cached_texts_in_a_batch_need_no_task(api, published):
    api.post("/api/v1/predictions/", {"text": "good film"})
    published.clear()
    body = api.post("/api/v1/batches/", {"texts": ["good film", "bad film"]}).json()
    assert [len(ids) for ids in published] == [1]
    assert [r["cached"] for r in api.get(f"/api/v1/batches/{body['id']}/").json()["results"]] == [True, False]


def test_a_batch_answered_wholly_from_the_cache_is_200_and_finished_and_a_partly_cached_one_202(api, published):
    api.post("/api/v1/predictions/", {"text": "good film"})
    api.post("/api/v1/predictions/", {"text": "bad film"})
    published.clear()
    cached = api.post("/api/v1/batches/", {"texts": ["good film", "bad film"]})
    assert cached.status_code == 200
    assert cached.json()["finished"] is True
    assert published == []  # nothing left for a worker
    partly = api.post("/api/v1/batches/", {"texts": ["good film", "a new text"]})
    assert partly.status_code == 202
    assert partly.json()["finished"] is False


def test_another_users_batch_is_404(api, stranger_api):
    body = api.post("/api/v1/batches/", {"texts": ["x"]}).json()
    assert stranger_api.get(f"/api/v1/batches/{body['id']}/").status_code == 404
    assert Batch.objects.count() == 1


def test_a_batch_looks_the_cache_up_in_one_round_trip(api, monkeypatch):
    def per_text_lookup(*args, **kwargs):
        raise AssertionError("batch_create looked a text up on its own")

    monkeypatch.setattr(submission, "result_cache_get", per_text_lookup)
    assert api.post("/api/v1/batches/", {"texts": ["a", "b", "c"]}).status_code == 202


@pytest.mark.parametrize("value", ["abc", "-1", "31", ""])
def test_a_bad_wait_on_a_batch_is_400_naming_the_field(api, value):
    body = api.post("/api/v1/batches/", {"texts": ["x"]}).json()
    response = api.get(f"/api/v1/batches/{body['id']}/?wait={value}")
    assert response.status_code == 400
    assert "wait" in response.json(), response.json()


def test_waiting_on_a_batch_that_does_not_finish_answers_its_state_after_the_wait(api, monkeypatch):
    """No worker runs here (the task is not sent): the wait ends at its timeout, 200 with finished false."""
    monkeypatch.setattr(predictions_run_task, "apply_async", lambda *args, **kwargs: SimpleNamespace(id="not-sent"))
    body = api.post("/api/v1/batches/", {"texts": ["never run"]}).json()
    began = time.monotonic()
    response = api.get(f"/api/v1/batches/{body['id']}/?wait=0.5")
    assert 0.5 <= time.monotonic() - began < 5
    assert response.status_code == 200
    assert response.json()["finished"] is False
    assert response.json()["counts"]["queued"] == 1


def test_waiting_on_a_finished_batch_answers_at_once(api):
    body = api.post("/api/v1/batches/", {"texts": ["good", "bad"]}).json()  # eager tasks: already run
    began = time.monotonic()
    detail = api.get(f"/api/v1/batches/{body['id']}/?wait=30").json()
    assert time.monotonic() - began < 2
    assert detail["finished"] is True
    assert detail["counts"]["succeeded"] == 2


def _batch_with_callbacks(owner, capture, n: int):
    with capture() as callbacks:
        batch = submission.batch_create(
            owner=owner, texts=[f"batch text {i}" for i in range(n)], model_name="sentiment"
        )
    return batch, callbacks


def test_a_batch_is_marked_published_in_its_insert_and_nothing_is_written_after_sending(
    owner, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """A worker skips locked rows: a write to the rows after the message is sent would make the
    worker that got it find none of them (and leave them to the sweeper)."""
    settings.PUBLISH_CHUNK_ROWS = 3
    sent = []
    monkeypatch.setattr(
        predictions_run_task, "apply_async", lambda *a, **kw: sent.append((kw["task_id"], kw["args"][0]))
    )
    batch, callbacks = _batch_with_callbacks(owner, django_capture_on_commit_callbacks, 5)
    with CaptureQueriesContext(connection) as queries:
        for callback in callbacks:
            callback()
    assert queries.captured_queries == []
    rows = list(Prediction.objects.filter(batch=batch).order_by("position"))
    assert [(task_id, ids) for task_id, ids in sent] == [
        (rows[0].task_id, [r.pk for r in rows[:3]]),
        (rows[3].task_id, [r.pk for r in rows[3:]]),
    ]
    assert all(r.published_at is not None for r in rows)


def test_a_batch_chunk_the_broker_refused_is_left_unpublished_for_the_sweeper(
    owner, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.PUBLISH_CHUNK_ROWS = 2
    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs["task_id"])
        if len(calls) == 2:
            raise ConnectionError("broker down")

    monkeypatch.setattr(predictions_run_task, "apply_async", flaky)
    batch, callbacks = _batch_with_callbacks(owner, django_capture_on_commit_callbacks, 5)
    for callback in callbacks:
        callback()
    assert len(calls) == 2  # the third chunk is not tried once the broker failed
    published = list(Prediction.objects.filter(batch=batch).order_by("position").values_list("published_at", flat=True))
    assert [p is not None for p in published] == [True, True, False, False, False]
