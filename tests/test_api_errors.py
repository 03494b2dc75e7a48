"""Every answer under /api/ is JSON, with DEBUG on (the embedded default) and off; other pages keep
Django's own. Faults of the database are in tests/test_faults.py (a private PostgreSQL stopped)."""

from __future__ import annotations

import logging

import psycopg
import pytest
from django.db import IntegrityError, OperationalError, connection
from django.test import override_settings
from rest_framework.test import APIClient

from bench.stack import free_port
from mlsite.dbfaults import database_unreachable
from predictions.api import views
from predictions.models import Prediction

pytestmark = pytest.mark.django_db

DEBUG_MODES = [pytest.param(True, id="debug-on"), pytest.param(False, id="debug-off")]
UNKNOWN_PATHS = [
    "/api/v1/predictions/abc/",
    "/api/v1/predictions/null,null/",
    "/api/v1/batches/null,null/",
    "/api/v1/predictions/1/extra/",
    "/api/nothing",
    "/api/",
]


def assert_json_detail(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json", response.content[:300]
    body = response.json()
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str), body
    return body


@pytest.mark.parametrize("debug", DEBUG_MODES)
@pytest.mark.parametrize("path", UNKNOWN_PATHS)
def test_a_path_under_api_that_matches_no_route_is_a_json_404_for_every_method(api, debug, path):
    with override_settings(DEBUG=debug):
        for method in ("get", "post", "put", "patch", "delete", "options", "head"):
            response = getattr(api.client, method)(path, {"text": "x"}, format="json")
            assert response.status_code == 404, (method, response.content[:300])
            assert response["Content-Type"] == "application/json", (method, response.content[:300])
            if method != "head":
                assert response.json() == {"detail": "Not found."}, method
        # Anonymous, and without a CSRF token on a session client: the same JSON 404.
        assert_json_detail(APIClient(enforce_csrf_checks=True).post(path, {}, format="json"), 404)
    assert Prediction.objects.count() == 0


@pytest.mark.parametrize("debug", DEBUG_MODES)
def test_a_route_without_its_trailing_slash_is_a_json_404_naming_the_route(api, debug):
    """Django would redirect a GET (301, HTML) and, with DEBUG on, fail a POST with an HTML 500."""
    with override_settings(DEBUG=debug):
        for method in ("get", "post"):
            response = getattr(api.client, method)("/api/v1/predictions", {"text": "x"}, format="json")
            body = assert_json_detail(response, 404)
            assert "/api/v1/predictions/ (with the trailing slash)" in body["detail"], body
    assert Prediction.objects.count() == 0


@pytest.mark.parametrize("debug", DEBUG_MODES)
def test_a_wrong_method_is_a_json_405(api, debug):
    with override_settings(DEBUG=debug):
        assert_json_detail(api.client.delete("/api/v1/predictions/"), 405)
        assert_json_detail(api.client.put("/api/v1/models/", {}, format="json"), 405)


@pytest.mark.parametrize("debug", DEBUG_MODES)
def test_a_disallowed_host_is_a_json_400(api, debug):
    with override_settings(DEBUG=debug):
        for response in (
            api.client.get("/api/v1/models/", HTTP_HOST="evil.example"),
            api.client.post("/api/v1/predictions/", {"text": "x"}, HTTP_HOST="evil.example"),
        ):
            assert response.status_code == 400
            assert response["Content-Type"] == "application/json"
            assert list(response.json()) == ["Host"]  # named like a field, as the schema's FieldErrors
        assert "application/json" not in api.client.get("/healthz", HTTP_HOST="evil.example")["Content-Type"]
    assert Prediction.objects.count() == 0


@pytest.mark.parametrize("debug", DEBUG_MODES)
@pytest.mark.parametrize("accept", ["application/json", "text/html", "*/*"])
def test_an_unhandled_error_in_a_view_is_a_json_500_and_its_traceback_is_logged(
    owner, monkeypatch, caplog, debug, accept
):
    def broken():
        raise RuntimeError("a bug in the view")

    monkeypatch.setattr(views, "model_names", broken)
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(owner)
    with override_settings(DEBUG=debug), caplog.at_level(logging.ERROR, logger="django.request"):
        response = client.get("/api/v1/models/", HTTP_ACCEPT=accept)
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Server error."}
    [record] = [r for r in caplog.records if r.name == "django.request" and r.exc_info]
    assert record.getMessage() == "Internal Server Error: /api/v1/models/"
    assert isinstance(record.exc_info[1], RuntimeError)


def test_a_database_error_that_is_not_an_outage_stays_a_500(owner, monkeypatch):
    def conflict():
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setattr(views, "model_names", conflict)
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(owner)
    response = client.get("/api/v1/models/")
    assert response.status_code == 500
    assert response.json() == {"detail": "Server error."}
    assert "Retry-After" not in response


@pytest.mark.parametrize("debug", DEBUG_MODES)
def test_pages_outside_the_api_keep_djangos_own_answers(client, debug):
    with override_settings(DEBUG=debug):
        for path in ("/nothing/", "/admin/nothing/"):
            response = client.get(path)
            assert response.status_code in (404, 302), path  # the admin sends strangers to its login page
            assert "application/json" not in response.get("Content-Type", ""), path
        response = client.get("/nothing/")
        assert response.status_code == 404
        assert response["Content-Type"].startswith("text/html")
        if debug:
            assert b"Using the URLconf defined in" in response.content  # Django's technical 404 page


def test_the_connection_errors_of_postgresql_are_told_from_a_statements_errors():
    """Real errors from psycopg, wrapped by Django as a request would see them."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://…)")
    refused = _django_error(
        lambda: psycopg.connect(f"postgres://postgres@127.0.0.1:{free_port()}/x", connect_timeout=2)
    )
    assert isinstance(refused, OperationalError)
    assert database_unreachable(refused)

    with psycopg.connect(_url(), autocommit=True) as conn, psycopg.connect(_url(), autocommit=True) as admin:
        timeout = _django_error(lambda: conn.execute("SET statement_timeout = 1; SELECT pg_sleep(1)"))
        assert isinstance(timeout, OperationalError)  # a statement that ran out of time: not an outage
        assert not database_unreachable(timeout)
        conn.execute("RESET statement_timeout; CREATE TEMP TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        duplicate = _django_error(lambda: conn.execute("INSERT INTO t VALUES (1)"))
        assert isinstance(duplicate, IntegrityError)
        assert not database_unreachable(duplicate)

        # The session ended by the server, as pg_terminate_backend (or a restart) ends a web process's.
        admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        ended = _django_error(lambda: conn.execute("SELECT 1"))
        assert isinstance(ended, OperationalError)
        assert database_unreachable(ended)
        closed = _django_error(lambda: conn.execute("SELECT 1"))  # and every use after it
        assert database_unreachable(closed)


def _django_error(call) -> Exception:
    """What Django raises for a driver error (its wrapper keeps the driver's error as __cause__)."""
    try:
        with connection.wrap_database_errors:
            call()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def _url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
