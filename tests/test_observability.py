"""Logs (JSON lines with the request id, never a text at INFO or above), /metrics and /readyz's cache check."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlsite.logs import JsonFormatter, RequestIdFilter
from predictions.models import Prediction, PredictionStatus
from predictions.monitoring import metrics_dir_reset
from predictions.registry import classifier_get
from tests.factories import DEAD_REDIS

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def captured_log_lines(level: int = logging.DEBUG):
    """Every record logged in the block, at `level` and above, as the console handler writes it (JSON)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    lines: list[str] = []
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        lines.extend(stream.getvalue().splitlines())


def records(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]  # fails on any line that is not one JSON object


# --- Logs ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # autocommit, as in production: the task is published inside the request
def test_every_log_line_of_a_request_and_its_task_is_json_with_the_request_id(api):
    with captured_log_lines() as lines:
        response = api.post(
            "/api/v1/predictions/?wait=5", {"text": "a gorgeous, witty film"}, HTTP_X_REQUEST_ID="req-abc.123"
        )
    assert response.status_code == 200
    assert response["X-Request-ID"] == "req-abc.123"
    logged = records(lines)
    assert logged
    assert all(r["request_id"] == "req-abc.123" for r in logged)
    assert all({"time", "level", "logger", "message", "request_id"} <= set(r) for r in logged)
    [forward_pass] = [r for r in logged if r["message"].startswith("forward pass")]
    row = Prediction.objects.get()
    assert row.request_id == "req-abc.123"
    assert forward_pass["request_ids"] == ["req-abc.123"]
    assert forward_pass["prediction_ids"] == [row.pk]
    assert forward_pass["model"] == "sentiment"
    assert forward_pass["size"] == 1
    assert forward_pass["level"] == "INFO"
    [access] = [r for r in logged if r["logger"] == "mlsite.access"]
    assert access["message"] == "POST /api/v1/predictions/ 200"
    assert access["level"] == "INFO"
    assert (access["method"], access["path"], access["status"]) == ("POST", "/api/v1/predictions/", 200)
    assert access["user_id"] == row.owner_id
    assert access["duration_ms"] > 0


@pytest.mark.parametrize("incoming", [None, "", "two words", "x" * 129, "line\nbreak", '"quoted"'])
def test_a_missing_or_unsafe_request_id_is_replaced_by_a_fresh_one(client, incoming):
    headers = {} if incoming is None else {"HTTP_X_REQUEST_ID": incoming}
    response = client.get("/healthz", **headers)
    assert response.status_code == 200
    assert len(response["X-Request-ID"]) == 32
    assert int(response["X-Request-ID"], 16) >= 0


def test_answers_refused_before_the_view_still_carry_a_request_id_and_an_access_line(client, settings):
    with captured_log_lines(logging.INFO) as lines:
        response = client.post(
            "/api/v1/predictions/", data=b"{}", content_type="application/json", CONTENT_LENGTH=str(10**9)
        )
    assert response.status_code == 413
    logged = records(lines)
    [access] = [r for r in logged if r["logger"] == "mlsite.access"]
    assert access["status"] == 413
    assert access["user_id"] is None
    # Django's own "Payload Too Large" warning comes after the middleware; it carries the id too.
    assert {r["logger"] for r in logged} == {"mlsite.access", "django.request"}
    assert {r["request_id"] for r in logged} == {response["X-Request-ID"]}


def test_probes_are_logged_at_debug_only(client):
    with captured_log_lines(logging.INFO) as lines:
        client.get("/healthz")
    assert not [r for r in records(lines) if r["logger"] == "mlsite.access"]


@pytest.mark.django_db(transaction=True)
def test_no_prediction_text_is_logged_at_info_or_above(api, monkeypatch):
    """A whole round: a waited prediction, a batch whose forward pass fails on a text (its exception
    quotes the text), a cache hit, a bad request. The text may be logged at DEBUG, never above."""
    secret, poison = "zebra marmalade sings at dawn", "quokka verdict blue"
    classifier = classifier_get("sentiment")
    real_passes = classifier.passes

    def passes(texts, **kwargs):
        if poison in texts:
            raise ValueError(f"cannot encode {texts!r}")  # what a careless library might say
        yield from real_passes(texts, **kwargs)

    monkeypatch.setattr(classifier, "passes", passes)
    with captured_log_lines(logging.DEBUG) as lines:
        assert api.post("/api/v1/predictions/?wait=5", {"text": secret}).status_code == 200
        # 200 here: the eager tasks ran at commit, so the batch was finished when it was answered
        assert api.post("/api/v1/batches/", {"texts": [secret + " again", poison]}).status_code == 200
        assert api.post("/api/v1/predictions/", {"text": secret}).json()["cached"] is True
        assert api.post("/api/v1/predictions/", {"text": secret, "model": "nope"}).status_code == 400
    assert Prediction.objects.get(text=poison).status == PredictionStatus.FAILED
    logged = records(lines)
    loud = [line for line, r in zip(lines, logged, strict=True) if r["level"] not in ("DEBUG",)]
    assert any(r["logger"] == "mlsite.access" for r in logged)
    assert any("failed for" in line for line in loud)
    assert not [line for line in loud if secret in line or poison in line]
    assert any(poison in line for line in lines), "the capture must see DEBUG records (the traceback)"


def _stderr_of_a_warning(log_format: str | None) -> str:
    env = {**os.environ}
    env.pop("LOG_FORMAT", None)
    if log_format is not None:
        env["LOG_FORMAT"] = log_format
    code = "import logging; logging.getLogger('mlsite.probe').warning('hello %s', 'world', extra={'n': 7})"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_logs_are_json_lines_by_default_and_plain_on_request():
    [line] = [line for line in _stderr_of_a_warning(None).splitlines() if "mlsite.probe" in line]
    entry = json.loads(line)
    assert {k: entry[k] for k in ("level", "logger", "message", "request_id", "n")} == {
        "level": "WARNING",
        "logger": "mlsite.probe",
        "message": "hello world",
        "request_id": None,
        "n": 7,
    }
    assert entry["time"].endswith("+00:00")
    plain = _stderr_of_a_warning("plain")
    assert "WARNING mlsite.probe [None] hello world" in plain
    assert "{" not in plain
    refused = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env={**os.environ, "LOG_FORMAT": "xml"}, capture_output=True
    )
    assert refused.returncode != 0
    assert b"LOG_FORMAT='xml': expected one of json, plain" in refused.stderr


# --- /metrics -----------------------------------------------------------------------------------


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from /metrics, parsed as Prometheus does."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def moved(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.mark.django_db
def test_metrics_count_what_the_web_and_the_worker_did(api, client, owner):
    before = scrape(client)
    assert api.post("/api/v1/predictions/", {"text": "good film"}).status_code == 202  # run eagerly
    assert api.post("/api/v1/predictions/", {"text": "good film"}).status_code == 200  # from the cache
    Prediction.objects.create(owner=owner, text="x", text_sha256="x", model_name="emotions")  # queued
    after = scrape(client)

    assert moved(before, after, "mlsite_result_cache_lookups_total", model="sentiment", result="miss") == 1
    assert moved(before, after, "mlsite_result_cache_lookups_total", model="sentiment", result="hit") == 1
    assert moved(before, after, "mlsite_inference_batch_size_count", model="sentiment") == 1
    assert moved(before, after, "mlsite_inference_batch_size_sum", model="sentiment") == 1
    assert moved(before, after, "mlsite_inference_seconds_count", model="sentiment") == 1
    assert moved(before, after, "mlsite_inference_seconds_sum", model="sentiment") > 0
    assert moved(before, after, "mlsite_prediction_seconds_count", model="sentiment", status="succeeded") == 1
    assert moved(before, after, "mlsite_http_requests_total", method="POST", status="202") == 1
    assert moved(before, after, "mlsite_http_requests_total", method="POST", status="200") == 1
    assert moved(before, after, "mlsite_http_requests_total", method="GET", status="200") == 1  # the first scrape
    # Read from the database at scrape time: every status of every served model, zeros included.
    assert after[("mlsite_predictions", (("model", "sentiment"), ("status", "succeeded")))] == 2
    assert after[("mlsite_predictions", (("model", "emotions"), ("status", "queued")))] == 1
    assert after[("mlsite_predictions", (("model", "emotions"), ("status", "failed")))] == 0
    assert after[("mlsite_queue_depth", ())] == 1


@pytest.mark.django_db
def test_the_batch_cache_lookup_counts_every_text(api, client):
    api.post("/api/v1/batches/", {"texts": ["one", "two"], "model": "emotions"})
    before = scrape(client)
    api.post("/api/v1/batches/", {"texts": ["one", "two", "three"], "model": "emotions"})
    after = scrape(client)
    assert moved(before, after, "mlsite_result_cache_lookups_total", model="emotions", result="hit") == 2
    assert moved(before, after, "mlsite_result_cache_lookups_total", model="emotions", result="miss") == 1
    assert moved(before, after, "mlsite_inference_batch_size_sum", model="emotions") == 1


@pytest.mark.django_db
def test_a_cache_outage_is_counted_as_errors(api, client, settings):
    before = scrape(client)
    settings.CACHES = DEAD_REDIS
    api.post("/api/v1/predictions/", {"text": "good film"})
    after = scrape(client)
    assert moved(before, after, "mlsite_result_cache_lookups_total", model="sentiment", result="error") == 1


@pytest.mark.django_db
def test_metrics_need_the_token_when_one_is_set(client, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-token", REMOTE_ADDR="203.0.113.9")


@pytest.mark.django_db
def test_metrics_without_a_token_answer_loopback_clients_only(client, settings):
    settings.METRICS_TOKEN = ""
    assert scrape(client, REMOTE_ADDR="::1")
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403
    assert "METRICS_TOKEN" in response.json()["detail"]


def test_runstack_starts_the_metrics_directory_afresh(tmp_path):
    (tmp_path / "counter_host-12.db").write_bytes(b"\0" * 8)
    (tmp_path / "histogram_host-12.db").write_bytes(b"\0" * 8)
    (tmp_path / "keep.txt").write_text("not a sample file")
    assert metrics_dir_reset(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# --- /readyz with a real Redis that goes away ---------------------------------------------------


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own on a free port (the shared one is never touched)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, *f"--port {port} --bind 127.0.0.1 --appendonly no --dir {tmp_path}".split(), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield process, f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.django_db
def test_readyz_stays_200_and_says_degraded_when_redis_goes_away(client, settings, private_redis):
    process, url = private_redis
    settings.READYZ_WORKER_TIMEOUT_MS = 100
    settings.CACHES = {
        "default": {
            "BACKEND": "mlsite.redis_cache.RedisCache",
            "LOCATION": url,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    assert client.get("/readyz").json()["checks"]["cache"] == "ok"
    process.kill()
    process.wait(timeout=10)
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["cache"].startswith("degraded: ConnectionError")
