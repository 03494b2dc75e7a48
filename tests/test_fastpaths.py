"""The framework bypasses (mlsite/fastpaths.py) held equal to the framework: the same requests answer the
same with each bypass on and off, and rows are stored the same; every name in the list is one a bypass reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from mlsite.env import env_subset
from mlsite.fastpaths import BYPASSES
from predictions.memos import memos_forget
from predictions.models import Prediction

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"id", "url", "created_at", "started_at", "finished_at", "batch"}
STORED = ("text", "status", "label", "score", "scores", "labels", "model_name", "model_version", "cached", "error")


def _plain(value):
    """A response body without what differs between two runs (ids, URLs, times)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _conversation(api) -> list:
    """Requests touching every bypass on the web's path; (status, content type, body) of each answer."""
    answers = []

    def keep(response) -> None:
        body = response.json() if response["Content-Type"].startswith("application/json") else response.content
        answers.append((response.status_code, response["Content-Type"], _plain(body)))

    created = api.post("/api/v1/predictions/", {"text": "a gorgeous, witty film"})
    keep(created)
    keep(api.post("/api/v1/predictions/?wait=5", {"text": "a gorgeous, witty film"}))  # a cache hit
    keep(api.post("/api/v1/predictions/", {"text": "joy!", "model": "emotions"}))
    keep(api.get(f"/api/v1/predictions/{created.json()['id']}/"))
    keep(api.get(f"/api/v1/predictions/{created.json()['id']}/", HTTP_ACCEPT="text/html;q=0.5, application/json"))
    keep(api.get("/api/v1/predictions/?format=json&status=succeeded"))
    keep(api.get("/api/v1/predictions/", HTTP_ACCEPT="application/xml"))  # 406
    for bad in ({"text": ""}, {"text": 5}, {"text": "x", "model": "nope"}, {"text": "a\x00b"}, ["x"], {}):
        keep(api.post("/api/v1/predictions/", bad))
    keep(api.post("/api/v1/predictions/?wait=abc", {"text": "fine"}))
    keep(api.post("/api/v1/predictions/?wait=31", {"text": "fine"}))
    batch = api.post("/api/v1/batches/", {"texts": ["great fun", "awful", "a gorgeous, witty film"]})
    keep(batch)
    keep(api.get(f"/api/v1/batches/{batch.json()['id']}/"))
    return answers


def _stored() -> list[tuple]:
    return list(Prediction.objects.order_by("pk").values_list(*STORED))


@pytest.mark.parametrize("name", sorted(BYPASSES))
def test_each_bypass_answers_and_stores_what_the_framework_would(name, api):
    memos_forget()
    with_it = _conversation(api)
    stored_with_it = _stored()
    Prediction.objects.all().delete()
    cache.clear()
    with override_settings(FAST_PATHS_OFF=frozenset({name})):
        memos_forget()
        without_it = _conversation(api)
        stored_without_it = _stored()
    assert without_it == with_it
    assert stored_without_it == stored_with_it


def test_every_bypass_in_the_list_is_read_by_its_code_and_none_is_read_unlisted():
    sources = "\n".join(
        path.read_text() for folder in ("mlsite", "predictions") for path in (ROOT / folder).rglob("*.py")
    )
    read = set(re.findall(r'fast_path\("([a-z_]+)"\)', sources))
    assert read == set(BYPASSES)


def test_fast_paths_off_names_only_known_bypasses(monkeypatch):
    monkeypatch.setenv("FAST_PATHS_OFF", "hand_built_json, prebuilt_insert")
    assert env_subset("FAST_PATHS_OFF", BYPASSES) == {"hand_built_json", "prebuilt_insert"}
    monkeypatch.setenv("FAST_PATHS_OFF", "hand_built_json,turbo")
    with pytest.raises(ImproperlyConfigured, match="FAST_PATHS_OFF: unknown turbo"):
        env_subset("FAST_PATHS_OFF", BYPASSES)
