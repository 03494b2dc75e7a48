"""CachedTokenAuthentication: a token is looked up once per process, and a change to the token or
its user (here, or in another process through Redis) is seen by the next request."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from predictions import pubsub
from predictions.api import authentication
from predictions.models import Prediction
from tests.conftest import api_for

ROOT = Path(__file__).resolve().parent.parent
URL = "/api/v1/models/"


def _token_queries(api) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        status = api.get(URL).status_code
    return status, sum("authtoken_token" in q["sql"] for q in queries.captured_queries)


@pytest.mark.django_db
def test_token_is_looked_up_once(api):
    assert _token_queries(api) == (200, 1)
    assert _token_queries(api) == (200, 0)
    assert _token_queries(api) == (200, 0)


@pytest.mark.django_db
def test_bearer_and_token_name_the_same_token_and_share_its_memory(api, owner):
    """Generated OpenAPI clients send `Authorization: Bearer <key>`; it is the same token as `Token <key>`."""
    key = owner.auth_token.key
    assert _token_queries(api) == (200, 1)
    api.client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert _token_queries(api) == (200, 0)  # remembered from the Token request
    api.client.credentials(HTTP_AUTHORIZATION=f"bearer {key}")  # the keyword is case-insensitive, as DRF's
    assert _token_queries(api) == (200, 0)
    for bad in (f"Bearer {key}x", "Bearer", f"Bearer {key} extra"):
        api.client.credentials(HTTP_AUTHORIZATION=bad)
        response = api.get(URL)
        assert response.status_code == 401, bad
        assert response.json()["detail"].startswith("Invalid token"), bad
        assert response["WWW-Authenticate"] == "Token"


@pytest.mark.django_db
def test_memory_off_looks_up_every_time(api, settings):
    settings.AUTH_TOKEN_CACHE_SECONDS = 0
    assert _token_queries(api) == (200, 1)
    assert _token_queries(api) == (200, 1)


@pytest.mark.django_db
def test_memory_expires(api, settings, monkeypatch):
    assert _token_queries(api) == (200, 1)
    later = time.monotonic() + settings.AUTH_TOKEN_CACHE_SECONDS + 1
    monkeypatch.setattr(authentication.time, "monotonic", lambda: later)
    assert _token_queries(api) == (200, 1)


@pytest.mark.django_db
def test_deleted_token_is_refused_at_once(api, owner):
    assert api.get(URL).status_code == 200
    owner.auth_token.delete()
    response = api.get(URL)
    assert response.status_code == 401, response.content


@pytest.mark.django_db
def test_deactivated_user_is_refused_at_once(api, owner):
    assert api.get(URL).status_code == 200
    owner.is_active = False
    owner.save()
    assert api.get(URL).status_code == 401


@pytest.mark.django_db
def test_permission_granted_is_seen_at_once(owner, stranger, django_capture_on_commit_callbacks):
    """The API shows everyone's predictions to a user with the view permission (see test_auth_isolation)."""
    Prediction.objects.create(owner=stranger, text="not yours", model_name="sentiment")
    api = api_for(owner, django_capture_on_commit_callbacks)
    assert api.get("/api/v1/predictions/").json()["count"] == 0
    owner.is_staff = True
    owner.save()
    owner.user_permissions.add(Permission.objects.get(codename="view_prediction"))
    assert api.get("/api/v1/predictions/").json()["count"] == 1


def _wait_until(probe, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.django_db
def test_message_from_another_process_empties_the_memory(api):
    if not settings.REDIS_URL:
        pytest.skip("needs Redis")
    assert api.get(URL).status_code == 200
    assert authentication._tokens
    assert _wait_until(pubsub.subscriber().subscribed.is_set)
    pubsub.redis_client().publish(authentication.AUTH_CHANNEL, b"1")  # as another process's change would
    assert _wait_until(lambda: not authentication._tokens), "the listener did not forget the tokens"


@pytest.mark.django_db(transaction=True)
def test_token_deleted_by_another_process_is_refused(api, owner):
    """A real second process (manage.py shell) deletes the token: this process refuses it next."""
    if not settings.REDIS_URL or connection.vendor != "postgresql":
        pytest.skip("needs Redis and a database server both processes reach")
    assert api.get(URL).status_code == 200
    assert _wait_until(pubsub.subscriber().subscribed.is_set)
    database = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
    }
    code = "from rest_framework.authtoken.models import Token; Token.objects.filter(user__username='owner').delete()"
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True, capture_output=True
    )
    assert _wait_until(lambda: api.get(URL).status_code == 401), "the deleted token was still accepted"
