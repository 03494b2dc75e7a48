"""mlsite.postgresql: the health check of a persistent connection skips its round trip while the
connection is quiet, and still replaces a connection the server closed."""

from __future__ import annotations

import select
import time

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import close_old_connections, connections

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


def test_connection_closed_by_the_server_is_replaced(postgresql, usable_calls):
    pid = postgresql.connection.info.backend_pid
    settings = postgresql.settings_dict
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname=settings["NAME"], autocommit=True
    ) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0] is True
    deadline = time.monotonic() + 5  # the server's FATAL message and the close reach the socket
    while not select.select([postgresql.connection.fileno()], [], [], 0.05)[0]:
        assert time.monotonic() < deadline, "the terminated connection never became readable"

    _next_request()
    assert User.objects.filter(username="nobody").count() == 0  # no error: the check ran and reconnected
    assert usable_calls == [pid]
    assert postgresql.connection.info.backend_pid != pid
