"""Liveness and readiness: /healthz says the process runs, /readyz that it can do its job.

/readyz answers 503 when the database, the broker or a model's files fail: without them this web
process cannot take a prediction. The cache and the workers make it `degraded` but still 200:
without Redis every text is computed (no cache, no pub/sub wake-up); without a worker submissions
are still stored and answered 202, and run once a worker is back. A load balancer that pulled every
web pod out because the workers are down would turn that partial outage into a total one
(READYZ_REQUIRE_WORKER=1 makes "no worker" a 503 where that is wanted).
"""

from __future__ import annotations

import contextlib
import threading
import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from mlsite.celery import app
from predictions.cache import cache_ping
from predictions.memos import memo
from predictions.registry import model_info_get, model_names
from predictions.services.dispatch import model_queue


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker() -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _cache() -> None:
    cache_ping()


def _models() -> None:
    for name in model_names():
        model_info_get(name)


class NoWorker(RuntimeError):
    pass


_worker_lock = threading.Lock()
_worker_answer: dict = {"at": None, "failure": None}  # the last ping of this process, reused for a few seconds


@memo
def worker_ping_forget() -> None:
    """Forget the remembered ping (tests that start or stop a worker call this)."""
    with _worker_lock:
        _worker_answer.update(at=None, failure=None)


def _worker() -> None:
    """Some worker on this deployment's queue answers a ping within READYZ_WORKER_TIMEOUT_MS.

    The first answer ends the wait; the outcome is reused for READYZ_WORKER_CACHE_SECONDS, so a
    probe every second costs one ping per few seconds per web process (and one wait of the timeout
    while no worker answers).
    """
    with _worker_lock:
        at = _worker_answer["at"]
        if at is None or time.monotonic() - at >= settings.READYZ_WORKER_CACHE_SECONDS:
            timeout = settings.READYZ_WORKER_TIMEOUT_MS / 1000
            try:
                replies = app.control.ping(timeout=timeout, limit=1)
                failure = None if replies else f"no worker answered a ping within {timeout:g}s"
                unserved = _models_without_worker() if replies else []
                if unserved:
                    failure = f"no worker serves {', '.join(repr(name) for name in unserved)} (its rows wait)"
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
            _worker_answer.update(at=time.monotonic(), failure=failure)
        failure = _worker_answer["failure"]
    if failure is not None:
        raise NoWorker(failure)


def _models_without_worker() -> list[str]:
    """The models whose queue no worker consumes (worker pools: docs/scaling.md). RabbitMQ tells, in a
    passive declare's consumer count; on another broker (the embedded default), none is named."""
    unserved = []
    with app.connection_for_write() as conn:
        if conn.transport.driver_type != "amqp":
            return []
        for name in model_names():
            channel = conn.channel()  # a declare of a queue that does not exist closes its channel
            try:
                consumers = channel.queue_declare(queue=model_queue(name), passive=True).consumer_count
            except conn.channel_errors:
                consumers = 0
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
            if not consumers:
                unserved.append(name)
    return unserved


# Each check, and whether its failure makes the process unready (503) or only degraded (200).
CHECKS = {
    "database": (_database, True),
    "broker": (_broker, True),
    "models": (_models, True),
    "cache": (_cache, False),
    "worker": (_worker, None),  # None: READYZ_REQUIRE_WORKER decides
}


def _failure(exc: Exception) -> str:
    return str(exc) if isinstance(exc, NoWorker) else f"{type(exc).__name__}: {exc}"


def _registry() -> list[dict]:
    served = []
    for name in model_names():
        entry = {"name": name, "source": settings.MLSITE_MODELS[name], "version": None}
        with contextlib.suppress(Exception):  # the models check names the reason
            entry["version"] = model_info_get(name).version
        served.append(entry)
    return served


@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """200 `ok`; 200 `degraded` naming the cache or the workers; 503 `unavailable` naming what failed."""
    checks: dict[str, str] = {}
    unready = degraded = False
    for name, (check, required) in CHECKS.items():
        if name == "worker" and checks["broker"] != "ok":
            checks[name] = "error: not pinged, the broker is down"
            unready = True
            continue
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:
            if required is None:
                required = settings.READYZ_REQUIRE_WORKER
            checks[name] = (f"error: {_failure(exc)}" if required else f"degraded: {_failure(exc)}")[:300]
            unready = unready or required
            degraded = degraded or not required
    status = "unavailable" if unready else "degraded" if degraded else "ok"
    response = JsonResponse({"status": status, "checks": checks, "models": _registry()}, status=503 if unready else 200)
    if checks["database"] != "ok":  # as the API answers while the database is unreachable
        response["Retry-After"] = str(settings.DATABASE_RETRY_AFTER)
    return response
