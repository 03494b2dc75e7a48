"""The result cache: (model name, model version, sha256(text)) → label scores.

A cache outage must never fail a request: every error is logged and treated as a miss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.core.cache import cache

from predictions.monitoring import cache_lookups_observe

logger = logging.getLogger(__name__)

KEY_PREFIX = "result:v1"
CACHED_FIELDS = ("label", "score", "scores", "labels", "margin")  # what an entry holds: the model's answer to a text


def result_cache_key(model_name: str, model_version: str, text_sha256: str) -> str:
    return f"{KEY_PREFIX}:{model_name}:{model_version}:{text_sha256}"


def result_cache_get(model_name: str, model_version: str, text_sha256: str) -> dict | None:
    try:
        found = cache.get(result_cache_key(model_name, model_version, text_sha256))
    except Exception as exc:  # any backend error is a miss, never a 500
        logger.warning("result cache unavailable on get (%s): %s", type(exc).__name__, exc)
        cache_lookups_observe(model_name, errors=1)
        return None
    cache_lookups_observe(model_name, hits=int(found is not None), misses=int(found is None))
    return found


def result_cache_get_many(model_name: str, model_version: str, digests: list[str]) -> dict[str, dict]:
    """{sha256: cached result} for the digests found; one round trip."""
    keys = {result_cache_key(model_name, model_version, d): d for d in digests}
    try:
        found = cache.get_many(list(keys))
    except Exception as exc:
        logger.warning("result cache unavailable on get_many (%s): %s", type(exc).__name__, exc)
        cache_lookups_observe(model_name, errors=len(keys))
        return {}
    cache_lookups_observe(model_name, hits=len(found), misses=len(keys) - len(found))
    return {keys[key]: value for key, value in found.items()}


def result_cache_set_many(entries: dict[tuple[str, str, str], dict]) -> None:
    if not entries or settings.RESULT_CACHE_TTL == 0:
        return
    try:
        cache.set_many(
            {result_cache_key(*key): value for key, value in entries.items()}, timeout=settings.RESULT_CACHE_TTL
        )
    except Exception as exc:
        logger.warning("result cache unavailable on set (%s): %s", type(exc).__name__, exc)


def result_cache_delete_many(entries: Iterable[tuple[str, str, str]]) -> int:
    """Delete the entries of these (model name, version, sha256) keys; returns how many keys were named.

    Unlike the other calls, an error is raised, not logged: a purge must not report a text gone
    from the cache while its entry is still there.
    """
    keys = sorted({result_cache_key(*entry) for entry in entries})
    if keys:
        cache.delete_many(keys)
    return len(keys)


def cache_ping() -> None:
    """Raise if the cache cannot store and return a value."""
    cache.set("health:ping", "1", timeout=10)
    if cache.get("health:ping") != "1":
        raise RuntimeError("cache did not return the value just stored")
