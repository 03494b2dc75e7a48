"""The result cache on a real Redis, and what happens when Redis is down."""

from __future__ import annotations

import os

import pytest
import redis
from django.core.cache import cache

from predictions.cache import result_cache_get, result_cache_key
from predictions.models import Prediction, text_sha256
from tests.factories import DEAD_REDIS

pytestmark = pytest.mark.django_db


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (make test sets it)")
def test_results_land_in_redis_under_model_version_and_text_hash(api, settings):
    assert "RedisCache" in settings.CACHES["default"]["BACKEND"]
    body = api.post("/api/v1/predictions/", {"text": "great acting"}).json()
    row = Prediction.objects.get(pk=body["id"])
    key = result_cache_key("sentiment", row.model_version, text_sha256("great acting"))
    assert key == f"result:v1:sentiment:{row.model_version}:{text_sha256('great acting')}"
    cached = result_cache_get("sentiment", row.model_version, row.text_sha256)
    assert cached["label"] == row.label
    assert cached["scores"] == pytest.approx(row.scores)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    assert client.exists(f":1:{key}")
    assert 0 < client.ttl(f":1:{key}") <= settings.RESULT_CACHE_TTL


def test_a_redis_outage_degrades_to_computing_never_to_a_500(api, settings, published):
    settings.CACHES = DEAD_REDIS
    first = api.post("/api/v1/predictions/", {"text": "good film"})
    second = api.post("/api/v1/predictions/", {"text": "good film"})
    assert first.status_code == second.status_code == 202
    assert len(published) == 2  # both computed, neither cached
    rows = Prediction.objects.order_by("pk")
    assert [r.status for r in rows] == ["succeeded", "succeeded"]
    assert not any(r.cached for r in rows)


def test_a_cache_ttl_of_zero_disables_caching(api, settings, published):
    settings.RESULT_CACHE_TTL = 0
    api.post("/api/v1/predictions/", {"text": "good film"})
    assert api.post("/api/v1/predictions/", {"text": "good film"}).status_code == 202
    assert len(published) == 2


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (make test sets it)")
def test_the_cache_keeps_one_redis_client_per_server_and_it_answers():
    inner = cache._cache  # mlsite.redis_cache.RedisCacheClient
    assert inner.get_client() is inner.get_client() is inner.get_client(write=True)
    cache.set("test:kept-client", {"a": 1}, timeout=10)
    assert cache.get("test:kept-client") == {"a": 1}
    assert cache.get_many(["test:kept-client", "test:absent"]) == {"test:kept-client": {"a": 1}}
    cache.delete("test:kept-client")
    assert cache.get("test:kept-client") is None
    assert len(inner._clients) == 1
