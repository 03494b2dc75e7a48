"""A real Celery worker process consuming from the real broker (RabbitMQ under `make test`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest
from django.conf import settings as django_settings
from django_celery_results.models import TaskResult

from bench.stack import ROOT
from mlsite.celery import app
from predictions.management.commands.runstack import stack_commands
from predictions.models import Prediction, PredictionStatus
from predictions.tasks import predictions_run_task
from tests.test_observability import moved, scrape

pytestmark = pytest.mark.django_db(transaction=True)


def eventually(probe, timeout: float = 15.0):
    """The first truthy value of probe() within timeout seconds, else the last value."""
    deadline = time.monotonic() + timeout
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def worker_process(django_db_setup, django_db_blocker, tiny_sentiment_dir, tiny_emotions_dir, tmp_path_factory):
    """`celery worker` in its own process, on the test database, serving the tiny models."""
    database = django_settings.DATABASES["default"]
    if "postgresql" in database["ENGINE"]:
        url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    else:
        pytest.skip("the worker process needs a database server it can share with the tests")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "MLSITE_MODELS": f"sentiment=path:{tiny_sentiment_dir},emotions=path:{tiny_emotions_dir}",
        "MLSITE_VAR_DIR": str(tmp_path_factory.mktemp("worker-var")),
    }
    log = open(tmp_path_factory.mktemp("worker-log") / "worker.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [*stack_commands(bind="", web_workers=1, web_threads=1)["worker"], "--without-gossip", "--without-mingle"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log.flush()
        log.seek(0)
        if "ready." in log.read():
            break
        assert process.poll() is None, "worker exited early"
        time.sleep(0.2)
    process.log_path = log.name
    yield process
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    log.close()


@pytest.fixture
def worker(worker_process, celery_eager):
    celery_eager.conf.task_always_eager = False
    return worker_process


def test_a_prediction_travels_through_the_broker_to_a_worker_process_and_back(api, worker):
    assert app.conf.broker_url == os.environ.get("CELERY_BROKER_URL", "filesystem://")
    response = api.post("/api/v1/predictions/?wait=20", {"text": "a gorgeous, witty film"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["label"] in ("negative", "positive")
    row = Prediction.objects.get(pk=body["id"])
    result = eventually(lambda: TaskResult.objects.filter(task_id=row.task_id, status="SUCCESS").first())
    assert result.task_name == "predictions.run"  # stored by django-celery-results once the task returns


def test_a_batch_is_run_by_the_worker_process(api, worker, settings):
    settings.PUBLISH_CHUNK_ROWS = 2
    texts = ["good", "bad", "dull plot", "love it", "hate it"]
    body = api.post("/api/v1/batches/", {"texts": texts}).json()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        detail = api.get(f"/api/v1/batches/{body['id']}/").json()
        if detail["finished"]:
            break
        time.sleep(0.1)
    assert detail["counts"]["succeeded"] == 5
    task_ids = set(Prediction.objects.filter(batch_id=body["id"]).values_list("task_id", flat=True))
    # Three messages (2 + 2 + 1 texts) were sent; the first task to run claims every queued row it can,
    # so one to three tasks did the work, each recorded by django-celery-results.
    assert 1 <= len(task_ids) <= 3
    assert eventually(
        lambda: TaskResult.objects.filter(task_id__in=task_ids, status="SUCCESS").count() == len(task_ids)
    )
    assert not Prediction.objects.exclude(status=PredictionStatus.SUCCEEDED).exists()


def test_a_burst_of_single_predictions_is_all_run_by_the_worker_process(api, worker):
    """Submissions that find a wake-up pending send no message (predictions/services/dispatch.py): the pending
    task's claims must still run every one of them, through the real broker and worker."""
    sent = []
    real = predictions_run_task.apply_async

    def counted(*args, **kwargs):
        sent.append(kwargs.get("args"))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predictions_run_task, "apply_async", counted)
        ids = [api.post("/api/v1/predictions/", {"text": f"a burst, text {i}"}).json()["id"] for i in range(30)]
    rows = Prediction.objects.filter(pk__in=ids)
    assert eventually(lambda: not rows.exclude(status=PredictionStatus.SUCCEEDED).exists(), timeout=30)
    # How many messages went depends on how fast the worker takes them (tests/test_wakeup.py pins the
    # rule); what must hold is that every row ran, with no sweeper running here.
    assert 1 <= len(sent) <= len(ids)


def test_waiting_on_a_batch_returns_when_the_worker_finishes_it(api, worker, settings):
    """GET /batches/N/?wait=20 holds no worker and answers once the worker process wrote the last row."""
    settings.PUBLISH_CHUNK_ROWS = 2
    texts = [f"a waited-for text number {i}" for i in range(5)]
    body = api.post("/api/v1/batches/", {"texts": texts}).json()
    began = time.monotonic()
    detail = api.get(f"/api/v1/batches/{body['id']}/?wait=20").json()
    assert time.monotonic() - began < 15
    assert detail["finished"] is True
    assert detail["counts"]["succeeded"] == 5
    assert [r["text"] for r in detail["results"]] == texts


def test_readyz_is_ok_when_a_worker_answers_the_ping(client, worker):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok", body
    assert body["checks"]["worker"] == "ok", body


def test_the_request_id_travels_with_the_task_into_the_worker_s_log_lines(api, worker):
    request_id = f"trace-{uuid.uuid4().hex}"
    response = api.post("/api/v1/predictions/?wait=20", {"text": "a witty film"}, HTTP_X_REQUEST_ID=request_id)
    assert response.status_code == 200
    assert response["X-Request-ID"] == request_id
    assert Prediction.objects.get(pk=response.json()["id"]).request_id == request_id

    def logged_by_the_worker() -> list[dict]:
        with open(worker.log_path) as log:
            entries = [json.loads(line) for line in log if line.startswith("{")]
        mine = [e for e in entries if e["request_id"] == request_id]
        return mine if any(e["logger"] == "celery.app.trace" for e in mine) else []

    mine = eventually(logged_by_the_worker)
    [forward_pass] = [e for e in mine if e["message"].startswith("forward pass")]
    assert forward_pass["request_ids"] == [request_id]
    assert forward_pass["prediction_ids"] == [response.json()["id"]]
    assert any("succeeded in" in e["message"] for e in mine)  # Celery's own line, in the task's context


def test_metrics_include_what_the_worker_process_observed(api, worker, client):
    before = scrape(client)
    assert api.post("/api/v1/predictions/?wait=20", {"text": "love the plot"}).status_code == 200

    def scraped_once_the_worker_wrote() -> dict | None:
        current = scrape(client)
        finished = moved(before, current, "mlsite_prediction_seconds_count", model="sentiment", status="succeeded")
        return current if finished else None

    after = eventually(scraped_once_the_worker_wrote)
    assert after, "the worker's samples never showed up in /metrics"
    assert moved(before, after, "mlsite_inference_batch_size_count", model="sentiment") == 1
    assert moved(before, after, "mlsite_prediction_seconds_count", model="sentiment", status="succeeded") == 1
    assert moved(before, after, "mlsite_inference_seconds_count", model="sentiment") == 1
