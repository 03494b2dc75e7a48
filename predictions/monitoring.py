"""Prometheus metrics: what the web and worker processes observe, and /metrics that sums them.

prometheus_client runs in multiprocess mode: each process (every granian worker, every Celery pool
process) writes its samples to files of its own in PROMETHEUS_MULTIPROC_DIR, and /metrics reads
them all. The counts by status are not samples but read from the database when /metrics is scraped.
An observation costs a dictionary lookup and a write to a memory-mapped file: about a microsecond
or two, so the request path and the worker's batch loop pay next to nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from predictions.models import PredictionStatus
from predictions.registry import model_names
from predictions.selectors import prediction_counts_by_status_and_model

logger = logging.getLogger(__name__)

# Multiprocess values whatever was imported first (settings exports PROMETHEUS_MULTIPROC_DIR, where
# the files go). Files are named after the process; in docker-compose the web and worker containers
# share the directory (the appdata volume) and each numbers its processes from 1, so the host name goes in too.
_HOST = socket.gethostname().replace("_", "-")
_values.ValueClass = _values.MultiProcessValue(lambda: f"{_HOST}-{os.getpid()}")

# Every metric has labels, so no file is written before a process observes something.
HTTP_REQUESTS = Counter("mlsite_http_requests", "HTTP answers by method and status code.", ["method", "status"])
CACHE_LOOKUPS = Counter(
    "mlsite_result_cache_lookups",
    "Result cache look-ups when texts are submitted, by model and result (hit, miss, error).",
    ["model", "result"],
)
BATCH_SIZE = Histogram(
    "mlsite_inference_batch_size",
    "Texts per forward pass call (one claimed batch; the model runs it in passes of PASS_MAX_TEXTS).",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
INFERENCE_SECONDS = Histogram(
    "mlsite_inference_seconds",
    "Seconds per forward pass call, by model.",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PREDICTION_SECONDS = Histogram(
    "mlsite_prediction_seconds",
    "Seconds from a prediction's creation to its result being written by a worker (cache hits excluded).",
    ["model", "status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)

_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_children: dict[tuple, object] = {}  # labelled series already looked up in this process


def _child(metric, *labels):
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def http_request_observe(method: str, status: int) -> None:
    _child(HTTP_REQUESTS, method if method in _HTTP_METHODS else "other", status).inc()


def cache_lookups_observe(model_name: str, *, hits: int = 0, misses: int = 0, errors: int = 0) -> None:
    for result, count in (("hit", hits), ("miss", misses), ("error", errors)):
        if count:
            _child(CACHE_LOOKUPS, model_name, result).inc(count)


def forward_pass_observe(model_name: str, size: int, seconds: float) -> None:
    _child(BATCH_SIZE, model_name).observe(size)
    _child(INFERENCE_SECONDS, model_name).observe(seconds)


def prediction_finished_observe(model_name: str, status: str, seconds: float) -> None:
    _child(PREDICTION_SECONDS, model_name, status).observe(seconds)


class PredictionsCollector:
    """Rows by status and model, and the queue depth, read at scrape time in one GROUP BY query."""

    def describe(self):
        return [self._by_status(), self._queue_depth()]

    @staticmethod
    def _by_status():
        return GaugeMetricFamily("mlsite_predictions", "Predictions by status and model.", labels=["status", "model"])

    @staticmethod
    def _queue_depth():
        return GaugeMetricFamily("mlsite_queue_depth", "Predictions queued and not yet claimed by a worker.")

    def collect(self):
        try:
            counted = prediction_counts_by_status_and_model()
        except DatabaseError as exc:  # the samples of the processes are still worth serving
            logger.warning("metrics: could not count predictions (%s): %s", type(exc).__name__, exc)
            return
        counts = {(status, model): 0 for status in PredictionStatus.values for model in model_names()}
        counts.update({(status, model): rows for status, model, rows in counted})
        by_status = self._by_status()
        for (status, model), rows in sorted(counts.items()):
            by_status.add_metric([status, model], rows)
        queue_depth = self._queue_depth()
        queue_depth.add_metric([], sum(n for (status, _), n in counts.items() if status == PredictionStatus.QUEUED))
        yield by_status
        yield queue_depth


def _access_denied(request) -> JsonResponse | None:
    """With METRICS_TOKEN set, `Authorization: Bearer <token>` is required; without, loopback only."""
    token = settings.METRICS_TOKEN
    if token:
        given = request.META.get("HTTP_AUTHORIZATION", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        response = JsonResponse({"detail": "Send Authorization: Bearer <METRICS_TOKEN>."}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    try:
        if ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback:
            return None
    except ValueError:
        pass
    return JsonResponse(
        {"detail": "/metrics answers loopback clients only; set METRICS_TOKEN to let a scraper in with a token."},
        status=403,
    )


@require_GET
def metrics(request):
    """Prometheus text format: every process's samples plus the counts read from the database."""
    denied = _access_denied(request)
    if denied is not None:
        return denied
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    registry.register(PredictionsCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def metrics_dir_reset(path: Path | str) -> int:
    """Delete the sample files of earlier processes; runstack calls it before it starts its own."""
    removed = 0
    for file in Path(path).glob("*.db"):
        file.unlink(missing_ok=True)
        removed += 1
    return removed
