"""Django's Redis cache backend, keeping one redis-py client per server instead of building one per call.

Django's `RedisCacheClient.get_client` wraps the connection pool in a new `redis.Redis` on every
cache call, and building one copies redis-py's table of response callbacks: under W3 of `make bench`
(cache hits) that was 6 % of the web's CPU, as much as the GET's own round trip (docs/performance.md,
One Redis client per pool). A `redis.Redis`
holds no connection of its own (it takes one from its pool per command) and is safe to share, so
one per pool serves every call; pools, timeouts and errors are Django's, unchanged.
"""

from __future__ import annotations

from django.core.cache.backends import redis as django_redis

from mlsite.fastpaths import fast_path


class RedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, object] = {}  # id(pool) → its redis.Redis

    def get_client(self, key=None, *, write=False):
        if not fast_path("redis_client_per_pool"):
            return super().get_client(key, write=write)
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]  # Django's, absent from django-stubs
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]  # as above
        return client


class RedisCache(django_redis.RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = RedisCacheClient
