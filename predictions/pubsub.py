"""Redis pub/sub between processes: `publish(channel, message)`, and `subscribe(channel, handler)` served by
one subscriber thread per process.

Web processes hear two channels: rows a worker finished (predictions.notify wakes the requests waiting
for them) and token or user changes (predictions.api.authentication forgets remembered tokens).
Handlers are registered when the app is ready (predictions.apps); the thread starts on first use, after
the web server's fork. Without REDIS_URL nothing is published and nothing listens: callers fall back
to polling or to their own expiry.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

Handler = Callable[[bytes], None]


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)


def redis_client() -> redis.Redis | None:
    """The shared client for REDIS_URL (short timeouts: callers treat Redis as optional), or None without it."""
    return _client(settings.REDIS_URL) if settings.REDIS_URL else None


def publish(channel: str, message: bytes | str) -> bool:
    """Send `message` to every process subscribed to `channel`; False (logged) when Redis is absent or failing."""
    client = redis_client()
    if client is None:
        return False
    try:
        client.publish(channel, message)
    except Exception as exc:
        logger.warning("could not publish on %s (%s): %s", channel, type(exc).__name__, exc)
        return False
    return True


_handlers: dict[str, Handler] = {}
_resubscribed: list[Callable[[], None]] = []


def subscribe(channel: str, handler: Handler, *, missed: Callable[[], None] | None = None) -> None:
    """Call `handler(data)` in the subscriber thread for each message on `channel`; `missed()` after the
    subscription was lost and made again (messages sent meanwhile never arrive). Once per channel."""
    _handlers[channel] = handler
    if missed is not None and missed not in _resubscribed:
        _resubscribed.append(missed)


class Subscriber:
    """One thread holding a Redis subscription to every registered channel, reconnecting with backoff."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.subscribed = threading.Event()
        self.lost = False  # the subscription was lost at least once
        self.thread = threading.Thread(target=self._run, name="mlsite-pubsub", daemon=True)
        self.thread.start()

    def _dispatch(self, message: dict[str, Any]) -> None:
        handler = _handlers.get(message["channel"].decode())
        if handler is None:
            return
        try:
            handler(message["data"])
        except Exception as exc:  # one bad message must not end the subscription
            logger.warning("ignored a message on %s (%s): %s", message["channel"], type(exc).__name__, exc)

    def _run(self) -> None:
        delay = 0.1
        while True:
            pubsub = None
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=1, health_check_interval=10)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                channels = set(_handlers)
                pubsub.subscribe(*channels)
                if self.lost:
                    for missed in _resubscribed:
                        missed()
                self.subscribed.set()
                delay = 0.1
                while True:
                    if set(_handlers) != channels:  # a channel registered after the thread started
                        pubsub.subscribe(*(set(_handlers) - channels))
                        channels = set(_handlers)
                    message = pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message)
            except Exception as exc:  # Redis gone: subscribers' callers poll until it is back
                if self.subscribed.is_set() or delay == 0.1:  # once per outage, not once per retry
                    logger.warning("pub/sub subscriber lost Redis (%s): %s", type(exc).__name__, exc)
                self.subscribed.clear()
                self.lost = True
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # already failing; the loop reconnects
                        pubsub.close()


_subscribers: dict[str, Subscriber] = {}
_subscribers_lock = threading.Lock()


def subscriber() -> Subscriber | None:
    """This process's subscriber for REDIS_URL, started on first use; None without Redis."""
    url = settings.REDIS_URL
    if not url:
        return None
    with _subscribers_lock:
        if url not in _subscribers:
            _subscribers[url] = Subscriber(url)
        return _subscribers[url]
