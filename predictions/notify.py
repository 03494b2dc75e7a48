"""Telling a waiting request that its prediction finished, without holding a worker.

With Redis (REDIS_URL), the worker publishes on a per-prediction channel and the request waits on
it (pub/sub), so it wakes as soon as the row is written. Without Redis, the request polls the row.
Any Redis error falls back to polling: a notification is a shortcut, never the source of truth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import cache

from django.conf import settings

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "mlsite:prediction-finished:"


@cache
def _client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)


def redis_client():
    return _client(settings.REDIS_URL) if settings.REDIS_URL else None


def predictions_finished_notify(ids: Sequence[int]) -> None:
    client = redis_client()
    if client is None or not ids:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for pk in ids:
            pipe.publish(f"{CHANNEL_PREFIX}{pk}", b"1")
        pipe.execute()
    except Exception as exc:
        logger.warning("could not notify waiting requests (%s): %s", type(exc).__name__, exc)


def finished_wait(pk: int, *, timeout: float, is_finished: Callable[[], bool]) -> bool:
    """Block up to `timeout` seconds until `is_finished()`; True if it finished in time."""
    deadline = time.monotonic() + timeout
    client = redis_client()
    if client is not None:
        try:
            return _wait_pubsub(client, pk, deadline, is_finished)
        except Exception as exc:
            logger.warning("pub/sub wait failed, polling instead (%s): %s", type(exc).__name__, exc)
    return _wait_poll(deadline, is_finished)


def _wait_pubsub(client, pk: int, deadline: float, is_finished: Callable[[], bool]) -> bool:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(f"{CHANNEL_PREFIX}{pk}")
        if is_finished():  # finished before we subscribed
            return True
        while (remaining := deadline - time.monotonic()) > 0:
            # Re-check the row at least every second in case a notification was lost.
            message = pubsub.get_message(timeout=min(remaining, 1.0))
            if message is not None or is_finished():
                return is_finished()
        return is_finished()
    finally:
        pubsub.close()


def _wait_poll(deadline: float, is_finished: Callable[[], bool]) -> bool:
    delay = 0.01
    while not is_finished():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.1)
    return True
