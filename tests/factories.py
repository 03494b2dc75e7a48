"""Tiny models the tests build themselves (textclf.testing builds them), and a cache that is down."""

from __future__ import annotations

from textclf.testing import tiny_bert_save

__all__ = ["DEAD_REDIS", "tiny_bert_save"]

# A cache that is down: the Redis backend pointed at a port nothing listens on, with short timeouts.
DEAD_REDIS = {
    "default": {
        "BACKEND": "mlsite.redis_cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
    }
}
