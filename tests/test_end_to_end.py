"""The whole service as a user runs it: `make run`'s processes, the bundled models, real HTTP.

Once on the embedded default (SQLite, filesystem broker, file cache: no server at all) and once on
PostgreSQL + RabbitMQ + Redis, chosen by the three environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import Stack, fresh_database_url

pytestmark = pytest.mark.e2e


def _children_of(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _exercise(stack: Stack) -> None:
    status, body = stack.request("POST", "/api/v1/predictions/?wait=30", {"text": "a gorgeous, witty, moving film"})
    assert status == 200, (body, stack.logs())
    assert body["status"] == "succeeded"
    assert body["label"] == "positive"
    assert body["cached"] is False
    assert body["model"]["name"] == "sentiment"
    assert len(body["model"]["version"]) == 12
    status, stored = stack.request("GET", f"/api/v1/predictions/{body['id']}/")
    assert status == 200
    assert stored == body  # the answer the wait gave (from the notification, with Redis) is the row

    status, body = stack.request("POST", "/api/v1/predictions/?wait=30", {"text": "a dull, lifeless and boring mess"})
    assert status == 200, body
    assert body["label"] == "negative", body

    status, again = stack.request("POST", "/api/v1/predictions/", {"text": "a dull, lifeless and boring mess"})
    assert status == 200
    assert again["cached"] is True
    assert again["label"] == "negative"

    status, body = stack.request(
        "POST", "/api/v1/predictions/?wait=30", {"text": "Thank you so much, this made my day!", "model": "emotions"}
    )
    assert status == 200, body
    assert body["status"] == "succeeded", body
    assert len(body["scores"]) == 28
    assert "gratitude" in body["labels"]

    status, batch = stack.request("POST", "/api/v1/batches/", {"texts": ["great fun", "awful", "a masterpiece"]})
    assert status == 202
    deadline = time.monotonic() + 60  # polled as a client would; the embedded broker is polled by the worker too
    while True:
        status, detail = stack.request("GET", f"/api/v1/batches/{batch['id']}/")
        if detail["finished"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert detail["finished"], (detail["counts"], stack.logs())
    assert [r["label"] for r in detail["results"]] == ["positive", "negative", "positive"]

    status, _ = stack.request("GET", "/api/v1/predictions/", auth=False)
    assert status == 401

    _check_metrics_and_logs(stack)


def _check_metrics_and_logs(stack: Stack) -> None:
    """/metrics sums what the granian and Celery processes observed; the stack logs JSON lines."""
    with urllib.request.urlopen(stack.base + "/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("mlsite_inference_batch_size_count", (("model", "emotions"),))] >= 1  # the worker's
    assert samples[("mlsite_result_cache_lookups_total", (("model", "sentiment"), ("result", "hit")))] >= 1  # web's
    assert samples[("mlsite_http_requests_total", (("method", "POST"), ("status", "200")))] >= 4
    assert samples[("mlsite_predictions", (("model", "sentiment"), ("status", "succeeded")))] >= 6
    lines = stack.logs().splitlines()
    access = [json.loads(line) for line in lines if line.startswith("{") and '"logger": "mlsite.access"' in line]
    assert access, stack.logs()
    assert all(len(entry["request_id"]) == 32 for entry in access), stack.logs()


def _stop_and_check_nothing_is_left(stack: Stack) -> None:
    if stack.process is None:
        return
    children = _children_of(stack.process.pid)
    assert len(children) >= 3  # web, worker, beat (and their own children)
    assert stack.stop() == 0
    assert not [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


def test_the_embedded_default_needs_no_server(tmp_path):
    stack = Stack(tmp_path).start()
    try:
        _exercise(stack)
        assert (tmp_path / "db.sqlite3").is_file()
        assert (tmp_path / "broker").is_dir()
    finally:
        _stop_and_check_nothing_is_left(stack)


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="needs the real services")
def test_the_real_stack_from_three_variables(tmp_path):
    database_url, drop_database = fresh_database_url(os.environ["DATABASE_URL"])
    stack = Stack(
        tmp_path,
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=os.environ["CELERY_BROKER_URL"],
        REDIS_URL=os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/14",
        CELERY_QUEUE=f"e2e-{uuid.uuid4().hex[:8]}",
    )
    subprocess.run(["redis-cli", "-u", stack.env["REDIS_URL"], "flushdb"], check=False, capture_output=True)
    try:
        stack.start()
        _exercise(stack)
        assert not (tmp_path / "db.sqlite3").exists()
    finally:
        _stop_and_check_nothing_is_left(stack)
        drop_database()
