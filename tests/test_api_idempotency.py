"""The Idempotency-Key header on POST /api/v1/predictions/ and POST /api/v1/batches/."""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from predictions.models import Batch, IdempotencyKey, Prediction
from predictions.services import submission
from predictions.tasks import predictions_run_task, predictions_sweep_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def recorded(monkeypatch):
    """Task publishes are recorded, not run: rows stay queued, and the test counts the messages."""
    sent: list[list[int]] = []
    monkeypatch.setattr(
        predictions_run_task,
        "apply_async",
        lambda args, **_: sent.append(list(args[0])) or SimpleNamespace(id=f"t-{len(sent)}"),
    )
    return sent


def keyed(key: str) -> dict:
    return {"HTTP_IDEMPOTENCY_KEY": key}


def test_a_retry_with_the_same_key_replays_the_first_response_and_creates_nothing(api, published):
    first = api.post("/api/v1/predictions/", {"text": "good film"}, **keyed("order-1"))
    assert first.status_code == 202
    assert first["Idempotent-Replayed"] == "false"
    assert len(published) == 1  # the task ran (eagerly): the row has finished since
    assert Prediction.objects.get().status == "succeeded"

    again = api.post("/api/v1/predictions/", {"text": "good film"}, **keyed("order-1"))
    assert again.status_code == 202
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content  # byte for byte: the row as it was then (queued)
    assert again.json()["status"] == "queued"
    assert again["Location"] == first["Location"]
    assert Prediction.objects.count() == 1
    assert len(published) == 1
    assert IdempotencyKey.objects.count() == 1


def test_a_batch_retry_with_the_same_key_replays_and_creates_nothing(api, recorded):
    body = {"texts": ["good film", "bad plot", "so dull"]}
    first = api.post("/api/v1/batches/", body, **keyed("batch-7"))
    again = api.post("/api/v1/batches/", body, **keyed("batch-7"))
    assert first.status_code == again.status_code == 202
    assert again.content == first.content
    assert again["Location"] == first["Location"]
    assert again["Idempotent-Replayed"] == "true"
    assert Batch.objects.count() == 1
    assert Prediction.objects.count() == 3
    assert recorded == [[p.pk for p in Prediction.objects.order_by("position")]]


def test_the_same_key_with_a_different_body_is_422_naming_the_header(api, recorded):
    api.post("/api/v1/predictions/", {"text": "good film"}, **keyed("k"))
    response = api.post("/api/v1/predictions/", {"text": "bad film"}, **keyed("k"))
    assert response.status_code == 422
    assert "different request" in response.json()["Idempotency-Key"][0]
    other_model = api.post("/api/v1/predictions/", {"text": "good film", "model": "emotions"}, **keyed("k"))
    assert other_model.status_code == 422
    assert Prediction.objects.count() == 1
    assert len(recorded) == 1


def test_an_explicit_default_model_is_the_same_request(api, recorded):
    first = api.post("/api/v1/predictions/", {"text": "good film"}, **keyed("k"))
    again = api.post("/api/v1/predictions/", {"text": "good film", "model": "sentiment"}, **keyed("k"))
    assert again.status_code == 202
    assert again.json() == first.json()
    assert Prediction.objects.count() == 1


def test_keys_are_per_user_and_per_endpoint(api, stranger_api, recorded):
    mine = api.post("/api/v1/predictions/", {"text": "good film"}, **keyed("shared"))
    theirs = stranger_api.post("/api/v1/predictions/", {"text": "good film"}, **keyed("shared"))
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]
    assert theirs["Idempotent-Replayed"] == "false"
    batch = api.post("/api/v1/batches/", {"texts": ["good film"]}, **keyed("shared"))
    assert batch.status_code == 202
    assert batch["Idempotent-Replayed"] == "false"
    assert Prediction.objects.count() == 3
    assert Batch.objects.count() == 1
    assert IdempotencyKey.objects.count() == 3


@pytest.mark.parametrize(
    ("key", "why"),
    [("x" * 256, "got 256 characters"), ("", "got 0 characters"), ("clé-été", "not all ASCII"), ("a\tb", "")],
    ids=["too long", "empty", "not ascii", "control character"],
)
def test_a_bad_key_is_400_naming_the_header_and_stores_nothing(api, recorded, key, why):
    response = api.post("/api/v1/predictions/", {"text": "good film"}, **keyed(key))
    assert response.status_code == 400
    message = response.json()["Idempotency-Key"][0]
    assert "1 to 255 printable ASCII characters" in message
    assert why in message
    assert Prediction.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0
    assert recorded == []


def test_a_key_of_255_printable_characters_is_accepted(api, recorded):
    key = ("~ !" * 100)[:255]
    assert api.post("/api/v1/batches/", {"texts": ["a"]}, **keyed(key)).status_code == 202
    assert IdempotencyKey.objects.get().key == key


def test_an_expired_key_is_ignored_and_replaced(api, recorded, settings):
    first = api.post("/api/v1/predictions/", {"text": "good film"}, **keyed("old"))
    IdempotencyKey.objects.update(
        created_at=timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS, seconds=1)
    )
    again = api.post("/api/v1/predictions/", {"text": "bad film"}, **keyed("old"))  # a new request: no 422
    assert again.status_code == 202
    assert again["Idempotent-Replayed"] == "false"
    assert again.json()["id"] != first.json()["id"]
    assert Prediction.objects.count() == 2
    assert IdempotencyKey.objects.get().location == again["Location"]


def test_the_sweeper_deletes_expired_keys_only(api, recorded, settings):
    for key in ("a", "b", "c"):
        api.post("/api/v1/batches/", {"texts": ["x"]}, **keyed(key))
    IdempotencyKey.objects.filter(key__in=["a", "b"]).update(created_at=timezone.now() - timedelta(hours=25))
    assert predictions_sweep_task()["idempotency_keys_expired"] == 2
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["c"]


def test_a_request_without_the_header_runs_no_idempotency_query(api, recorded):
    with CaptureQueriesContext(connection) as queries:
        assert api.post("/api/v1/predictions/", {"text": "good film"}).status_code == 202
        assert api.post("/api/v1/batches/", {"texts": ["good film", "x"]}).status_code == 202
    assert not [q["sql"] for q in queries if "idempotency" in q["sql"].lower()]
    assert IdempotencyKey.objects.count() == 0


def test_a_refused_submission_does_not_use_up_the_key(api, owner, recorded, settings):
    settings.MAX_QUEUED = 1
    Prediction.objects.create(owner=owner, text="waiting", text_sha256="0" * 64, model_name="sentiment")
    refused = api.post("/api/v1/predictions/", {"text": "good film"}, **keyed("k"))
    assert refused.status_code == 503
    assert IdempotencyKey.objects.count() == 0
    settings.MAX_QUEUED = 0
    accepted = api.post("/api/v1/predictions/", {"text": "good film"}, **keyed("k"))
    assert accepted.status_code == 202
    assert accepted["Idempotent-Replayed"] == "false"


@pytest.mark.django_db(transaction=True)
def test_a_keyed_wait_that_sees_the_result_is_what_retries_get(api):
    first = api.post("/api/v1/predictions/?wait=5", {"text": "bad plot"}, **keyed("w"))
    assert first.status_code == 200
    assert first.json()["status"] == "succeeded"
    again = api.post("/api/v1/predictions/", {"text": "bad plot"}, **keyed("w"))
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Prediction.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_create_exactly_one_row(owner, recorded, monkeypatch):
    """Eight threads send the same keyed POST at once; each creation holds its transaction open a
    moment, so the others reach the key's unique index while the first is still uncommitted."""
    token = Token.objects.create(user=owner)
    create = submission.prediction_create

    def slow_create(**kwargs):
        prediction = create(**kwargs)
        threading.Event().wait(0.2)
        return prediction

    monkeypatch.setattr(submission, "prediction_create", slow_create)
    clients = 8
    barrier = threading.Barrier(clients)
    responses = [None] * clients

    def send(i: int) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        try:
            barrier.wait(timeout=10)
            responses[i] = client.post("/api/v1/predictions/", {"text": "good film"}, format="json", **keyed("race"))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(r is not None for r in responses)
    assert {r.status_code for r in responses} == {202}
    assert len({r.content for r in responses}) == 1
    assert sorted(r["Idempotent-Replayed"] for r in responses) == ["false"] + ["true"] * (clients - 1)
    assert Prediction.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    assert recorded == [[Prediction.objects.get().pk]]
