"""Worker pools (WORKER_MODELS): two real worker processes, one per model, on the same PostgreSQL and
RabbitMQ. Each row is answered by its model's pool; with one pool down its rows wait, /readyz names
the model, and they run once the pool is back (docs/scaling.md, Worker pools)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from django.conf import settings as django_settings
from django_celery_results.models import TaskResult

from bench.stack import ROOT
from predictions.health import worker_ping_forget
from predictions.management.commands.runstack import STACK_ENV, stack_commands
from predictions.models import Prediction, PredictionStatus
from predictions.services import dispatch, worker
from tests.test_worker import eventually

pytestmark = pytest.mark.django_db(transaction=True)


class Pool:
    """`celery worker` serving one model (WORKER_MODELS), named `<model>-pool@…`, on the test database;
    `runstack`'s shadow worker instead with `kind="shadow"`."""

    def __init__(self, model: str, env: dict[str, str], log_dir, *, kind: str = "worker") -> None:
        self.name = f"{model}-pool" if kind == "worker" else f"{model}-{kind}"
        self.model, self.kind, self.log_path = model, kind, log_dir / f"{self.name}.log"
        self.env = {**env, **STACK_ENV.get(kind, {}), "WORKER_MODELS": model}
        self.process: subprocess.Popen | None = None

    def start(self) -> Pool:
        return self.spawn().wait_ready()

    def spawn(self) -> Pool:
        """Start the process without waiting for it (several pools start side by side)."""
        log = open(self.log_path, "a+")  # noqa: SIM115 - the process writes it; closed with the file object
        command = stack_commands(bind="", web_workers=1, web_threads=1)[self.kind]
        self.process = subprocess.Popen(
            [*command, "--hostname", f"{self.name}@%h", "--without-gossip", "--without-mingle"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self) -> Pool:
        assert eventually(lambda: "ready." in self.log_path.read_text() or self.process.poll() is not None, 60)
        assert self.process.poll() is None, self.log_path.read_text()[-3000:]
        return self

    def stop(self) -> None:
        self.signal_stop()
        self.wait_stopped()

    def signal_stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        if self.process:
            self.process.wait(timeout=30)


def pool_env(tiny_sentiment_dir, tiny_emotions_dir, var_dir, **more: str) -> dict[str, str]:
    """A worker process's environment on the test database and broker, serving the tiny models
    (skips the test where they are not PostgreSQL and RabbitMQ, which processes can share)."""
    database = django_settings.DATABASES["default"]
    if "postgresql" not in database["ENGINE"] or not django_settings.CELERY_BROKER_URL.startswith("amqp"):
        pytest.skip("worker processes share a PostgreSQL and a RabbitMQ with the test")
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "MLSITE_MODELS": f"sentiment=path:{tiny_sentiment_dir},emotions=path:{tiny_emotions_dir}",
        "MLSITE_VAR_DIR": str(var_dir),
        **more,
    }


@pytest.fixture
def pools(django_db_setup, tiny_sentiment_dir, tiny_emotions_dir, tmp_path, celery_eager):
    env = pool_env(tiny_sentiment_dir, tiny_emotions_dir, tmp_path)
    celery_eager.conf.task_always_eager = False
    started = {model: Pool(model, env, tmp_path).spawn() for model in ("sentiment", "emotions")}
    for pool in started.values():
        pool.wait_ready()
    worker_ping_forget()
    yield started
    for pool in started.values():
        pool.signal_stop()  # both stop side by side
    for pool in started.values():
        pool.wait_stopped()
    worker_ping_forget()


def finished(ids: list[int]) -> bool:
    return not Prediction.objects.filter(pk__in=ids).exclude(status=PredictionStatus.SUCCEEDED).exists()


def answered_by(row: Prediction) -> str:
    """The pool whose task wrote the row. Celery stores the task's result when the task returns,
    which may be a while after the row is written (the task claims other rows first)."""
    result = eventually(lambda: TaskResult.objects.filter(task_id=row.task_id).first(), 30)
    assert result is not None, f"no result for task {row.task_id}"
    return result.worker.split("@")[0]


def test_each_row_is_answered_by_its_model_s_pool(api, pools):
    singles = [
        api.post("/api/v1/predictions/", {"text": f"single {i}", "model": m}).json()["id"]
        for i, m in enumerate(["sentiment", "emotions", "sentiment", "emotions"])
    ]
    batches = [
        api.post("/api/v1/batches/", {"texts": [f"{m} batch text {i}" for i in range(5)], "model": m}).json()
        for m in ("sentiment", "emotions")
    ]
    ids = singles + list(
        Prediction.objects.filter(batch_id__in=[b["id"] for b in batches]).values_list("pk", flat=True)
    )
    assert eventually(lambda: finished(ids), 60), list(
        Prediction.objects.filter(pk__in=ids).values("model_name", "status")
    )
    rows = list(Prediction.objects.filter(pk__in=ids))
    assert len(rows) == 14
    assert eventually(
        lambda: (
            TaskResult.objects.filter(task_id__in={r.task_id for r in rows}).count() == len({r.task_id for r in rows})
        )
    )
    for row in rows:
        assert answered_by(row) == f"{row.model_name}-pool", (row.model_name, row.text)
    for model, pool in pools.items():  # each pool loaded only its own model
        log = pool.log_path.read_text()
        assert f"serving {model} from the queues" in log
        other = "emotions" if model == "sentiment" else "sentiment"
        assert f"for {other} in" not in log  # no forward pass of the other model


def test_with_a_pool_down_its_rows_wait_readyz_names_it_and_they_run_once_it_is_back(api, client, pools):
    pools["emotions"].stop()
    worker_ping_forget()
    waiting = api.post("/api/v1/predictions/", {"text": "so happy today", "model": "emotions"}).json()["id"]
    served = api.post("/api/v1/predictions/", {"text": "a fine film", "model": "sentiment"}).json()["id"]
    assert eventually(lambda: finished([served]), 30)
    time.sleep(2)  # the sentiment pool has claimed again since: it must have left the emotions row alone
    assert Prediction.objects.get(pk=waiting).status == PredictionStatus.QUEUED
    readiness = client.get("/readyz").json()
    assert readiness["status"] == "degraded"
    assert "no worker serves 'emotions'" in readiness["checks"]["worker"]
    pools["emotions"].start()
    worker_ping_forget()
    assert eventually(lambda: finished([waiting]), 60)  # its message waited in the emotions queue
    assert answered_by(Prediction.objects.get(pk=waiting)) == "emotions-pool"
    worker_ping_forget()
    assert eventually(lambda: client.get("/readyz").json()["checks"]["worker"] == "ok", 15)


def test_a_pool_s_claim_takes_only_its_models_rows(owner, settings):
    settings.WORKER_MODELS = frozenset({"emotions"})
    rows = [
        Prediction.objects.create(owner=owner, text=f"t{i}", text_sha256="x", model_name=m)
        for i, m in enumerate(["sentiment", "emotions", "sentiment", "emotions"])
    ]
    taken = worker.predictions_claim([], task_id="pool", limit=10, others=True)
    assert sorted(r.pk for r in taken) == [rows[1].pk, rows[3].pk]
    taken_own = worker.predictions_claim([rows[0].pk], task_id="pool", limit=10, others=False)
    assert taken_own == []  # its own message's row of another model stays for that model's pool


def test_run_tasks_go_to_their_model_s_queue(owner, settings, monkeypatch):
    sent = []
    monkeypatch.setattr(dispatch, "_run_task_send", lambda ids, model, task_id=None: sent.append((list(ids), model)))
    rows = [
        Prediction.objects.create(owner=owner, text=f"t{i}", text_sha256="x", model_name=m)
        for i, m in enumerate(["sentiment", "emotions", "sentiment"])
    ]
    dispatch.predictions_publish([r.pk for r in rows])  # the sweeper's and reprocess's path
    assert sorted(sent) == sorted([([rows[0].pk, rows[2].pk], "sentiment"), ([rows[1].pk], "emotions")])
    assert dispatch.model_queue("emotions") == f"{settings.CELERY_TASK_DEFAULT_QUEUE}.emotions"
