"""Shared fixtures: tiny models registered in place of the bundled ones, users with tokens, an API client."""

from __future__ import annotations

import contextlib
import os

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mlsite.celery import app
from predictions import registry
from predictions.memos import memos_forget
from predictions.tasks import predictions_run_task
from textclf.testing import TINY_EMOTION_LABELS, TINY_SENTIMENT_LABELS, tiny_bert_save

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_sentiment_dir(tmp_path_factory):
    return tiny_bert_save(tmp_path_factory.mktemp("tiny-sentiment"), labels=TINY_SENTIMENT_LABELS)


@pytest.fixture(scope="session")
def tiny_emotions_dir(tmp_path_factory):
    return tiny_bert_save(tmp_path_factory.mktemp("tiny-emotions"), labels=TINY_EMOTION_LABELS, multi_label=True)


@pytest.fixture(scope="session", autouse=True)
def metrics_dir(tmp_path_factory):
    """Metric samples of this session, and of the worker processes it starts, in a directory of their own
    (set before the first sample is written; the worker fixture's processes inherit it)."""
    path = tmp_path_factory.mktemp("metrics")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashes():
    """Passwords set in this process hash with MD5, as Django's testing docs advise: PBKDF2 at its
    default iterations takes a quarter of a second a hash here, and most tests create a user or two.
    The default hashers stay listed after it, so a password that a process the test started wrote
    still checks; and a process the test starts hashes with its own settings. No test here is about
    the hash's strength (tests/test_settings_env.py holds that the served settings keep the default)."""
    from django.conf import settings  # noqa: PLC0415
    from django.contrib.auth.hashers import get_hashers, get_hashers_by_algorithm  # noqa: PLC0415

    served = list(settings.PASSWORD_HASHERS)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *served]
    get_hashers.cache_clear()
    get_hashers_by_algorithm.cache_clear()
    yield
    settings.PASSWORD_HASHERS = served
    get_hashers.cache_clear()
    get_hashers_by_algorithm.cache_clear()


@pytest.fixture(autouse=True)
def tiny_models(settings, tiny_sentiment_dir, tiny_emotions_dir, monkeypatch):
    """Every test serves tiny random models unless it registers others; the bundled ones have their own tests.
    No model version is active, and none is read from the database (tests/test_model_versions.py reads them)."""
    monkeypatch.setattr(registry, "_active", {})
    monkeypatch.setattr(registry, "_shadow", {})
    monkeypatch.setattr(registry, "_active_read_at", float("inf"))  # as if just read: not read again
    settings.MLSITE_MODELS = {"sentiment": f"path:{tiny_sentiment_dir}", "emotions": f"path:{tiny_emotions_dir}"}
    settings.DEFAULT_MODEL = "sentiment"
    return settings.MLSITE_MODELS


@pytest.fixture(autouse=True)
def celery_eager():
    """Tasks run in-process unless a test starts a real worker (see tests/test_worker.py)."""
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield app
    app.conf.task_always_eager = False


@pytest.fixture(autouse=True)
def memos_forgotten():
    """Each test starts with nothing this process remembered for an earlier one (predictions.memos):
    tokens, the queue's depth, the last worker ping, validated ?wait= values, negotiated renderers."""
    memos_forget()
    yield
    memos_forget()


@pytest.fixture(autouse=True)
def empty_cache():
    with contextlib.suppress(Exception):
        cache.clear()


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", password="pw-owner-1234")


@pytest.fixture
def stranger(django_user_model):
    return django_user_model.objects.create_user("stranger", password="pw-stranger-1234")


@pytest.fixture
def staff(django_user_model):
    """Staff who may view every prediction and batch (as the reviewers group may): the API shows them everyone's."""
    user = django_user_model.objects.create_user("staff", password="pw-staff-1234", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_prediction", "view_batch"]))
    return user


class Api:
    """An API client for one user that runs on_commit callbacks (task publishing) as a real request would."""

    def __init__(self, client, capture) -> None:
        self.client = client
        self.capture = capture

    def post(self, url: str, body=None, **kwargs):
        kwargs.setdefault("format", "json")
        with self.capture(execute=True):
            return self.client.post(url, body, **kwargs)

    def get(self, url: str, **kwargs):
        return self.client.get(url, **kwargs)


def api_for(user, capture):
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return Api(client, capture)


@pytest.fixture
def api(owner, django_capture_on_commit_callbacks):
    return api_for(owner, django_capture_on_commit_callbacks)


@pytest.fixture
def stranger_api(stranger, django_capture_on_commit_callbacks):
    return api_for(stranger, django_capture_on_commit_callbacks)


@pytest.fixture
def staff_api(staff, django_capture_on_commit_callbacks):
    return api_for(staff, django_capture_on_commit_callbacks)


@pytest.fixture
def anonymous_api(django_capture_on_commit_callbacks):
    return api_for(None, django_capture_on_commit_callbacks)


@pytest.fixture
def published(monkeypatch):
    """Records every task publish (the ids sent), while still running it."""
    sent: list[list[int]] = []
    original = predictions_run_task.apply_async

    def spy(*args, **kwargs):
        sent.append(list(kwargs.get("args", args[0] if args else [[]])[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(predictions_run_task, "apply_async", spy)
    return sent
