"""Persistent PostgreSQL connections (mlsite.postgresql): kept from request to request and from task to
task without a round trip while the connection is quiet, and replaced when the server closed them; with
the bypass off (FAST_PATHS_OFF=quiet_health_check), Django's own check does the same with a SELECT 1."""

from __future__ import annotations

import select
import time

import psycopg
import pytest
from celery import signals
from celery.fixups.django import DjangoWorkerFixup
from django.contrib.auth.models import User
from django.db import close_old_connections, connections
from django.test import override_settings

from mlsite.celery import app
from predictions.tasks import predictions_run_task

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def postgresql():
    connection = connections["default"]
    if connection.vendor != "postgresql":
        pytest.skip("the backend is for PostgreSQL")
    assert connection.settings_dict["ENGINE"] == "mlsite.postgresql"
    connection.health_check_enabled = True  # as settings set it; the test settings may turn it off
    connection.close_at = None  # a persistent connection, as CONN_MAX_AGE gives the service
    connection.ensure_connection()
    return connection


@pytest.fixture
def usable_calls(postgresql, monkeypatch):
    calls = []
    original = type(postgresql).is_usable

    def spy(self):
        calls.append(self.connection.info.backend_pid if self.connection else None)
        return original(self)

    monkeypatch.setattr(type(postgresql), "is_usable", spy)
    return calls


def _next_request() -> None:
    """What Django does between two requests: the next one starts with its health check not done."""
    close_old_connections()
    connections["default"].health_check_done = False


def test_quiet_connection_is_reused_without_a_round_trip(postgresql, usable_calls):
    pid = postgresql.connection.info.backend_pid
    for _ in range(3):
        _next_request()
        assert User.objects.filter(username="nobody").count() == 0
    assert usable_calls == []  # no SELECT 1 before the requests' queries
    assert postgresql.connection.info.backend_pid == pid


@override_settings(FAST_PATHS_OFF=frozenset({"quiet_health_check"}))
def test_without_the_bypass_django_checks_once_per_request_and_keeps_the_connection(postgresql, usable_calls):
    pid = postgresql.connection.info.backend_pid
    for _ in range(3):
        _next_request()
        assert User.objects.filter(username="nobody").count() == 0
        assert User.objects.filter(username="nobody").count() == 0  # the second query is not checked again
    assert usable_calls == [pid, pid, pid]  # one SELECT 1 per request, before its first query
    assert postgresql.connection.info.backend_pid == pid


def _server_closes(postgresql) -> int:
    """Terminate this process's connection from another one; returns the terminated backend's pid."""
    pid = postgresql.connection.info.backend_pid
    settings = postgresql.settings_dict
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname=settings["NAME"], autocommit=True
    ) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0] is True
    deadline = time.monotonic() + 5  # the server's FATAL message and the close reach the socket
    while not select.select([postgresql.connection.fileno()], [], [], 0.05)[0]:
        assert time.monotonic() < deadline, "the terminated connection never became readable"
    return pid


@pytest.mark.parametrize("off", [frozenset(), frozenset({"quiet_health_check"})], ids=["bypass", "django"])
def test_connection_closed_by_the_server_is_replaced(postgresql, usable_calls, off, settings):
    settings.FAST_PATHS_OFF = off
    pid = _server_closes(postgresql)
    _next_request()
    assert User.objects.filter(username="nobody").count() == 0  # no error: the check ran and reconnected
    assert usable_calls == [pid]
    assert postgresql.connection.info.backend_pid != pid


@pytest.fixture
def worker_task_signals():
    """What a prefork worker process runs around each task: Celery's Django fixup (installed as in
    `celery worker`) and mlsite.celery's handlers, through the real task_prerun/postrun signals."""
    fixup = DjangoWorkerFixup(app)
    fixup.install()
    task = app.tasks[predictions_run_task.name]

    def run_one_task() -> None:
        signals.task_prerun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
        assert User.objects.filter(username="nobody").count() == 0  # the task's queries
        signals.task_postrun.send(sender=task, task_id="t", task=task, args=(), kwargs={}, retval=None, state="SUCCESS")

    yield run_one_task
    # Undo install(): other tests run tasks eagerly and must not have their connection closed.
    signals.beat_embedded_init.disconnect(fixup.close_database)
    signals.task_prerun.disconnect(fixup.on_task_prerun)
    signals.task_postrun.disconnect(fixup.on_task_postrun)
    signals.worker_process_init.disconnect(fixup.on_worker_process_init)


def test_a_worker_process_keeps_its_connection_from_task_to_task(postgresql, worker_task_signals):
    """Celery's Django fixup would close it before and after every task (a new connection, about
    10 ms, per task); settings.CELERY_DB_REUSE_MAX turns that off."""
    pid = postgresql.connection.info.backend_pid
    for _ in range(3):
        worker_task_signals()
    assert postgresql.connection is not None
    assert postgresql.connection.info.backend_pid == pid


def test_a_worker_process_replaces_a_connection_the_server_closed_before_its_next_task(
    postgresql, worker_task_signals, usable_calls
):
    pid = _server_closes(postgresql)
    worker_task_signals()  # no error: mlsite.celery's check before the task reconnected
    assert usable_calls == [pid]  # through the backend's health check, as before a web request
    assert postgresql.connection.info.backend_pid != pid
