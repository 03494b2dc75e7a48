"""Token authentication that does not read the database on every request.

DRF's TokenAuthentication looks the token and its user up with one query per request; under load
that was one statement in three of a cache-hit POST (docs/performance.md, Cached token authentication). This class remembers,
per process, which user a token belongs to for AUTH_TOKEN_CACHE_SECONDS. A token deleted or
replaced, or a user changed (deactivated, permissions, password), empties the memory of the
process that made the change at once and, through Redis pub/sub (AUTH_CHANNEL), of every web
process; without Redis, the others follow within AUTH_TOKEN_CACHE_SECONDS. 0 turns the memory off.

`Authorization: Token <key>` and `Authorization: Bearer <key>` (what generated OpenAPI clients
send) name the same token and share the memory.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, cast

from django.conf import settings
from django.db.models.signals import m2m_changed, post_delete, post_save
from rest_framework.authentication import TokenAuthentication
from rest_framework.request import Request

from mlsite.fastpaths import fast_path
from predictions import pubsub
from predictions.memos import memo

if TYPE_CHECKING:
    from django.contrib.auth.models import User

AUTH_CHANNEL = "mlsite:auth-changed"  # a token or user changed: web processes forget remembered tokens

MAX_TOKENS = 10_000  # tokens remembered per process; past that, the memory starts again

_tokens: dict[str, tuple[object, object, float]] = {}  # key → (user, token, expires at)
_lock = threading.Lock()
_generation = [0]  # bumped by every forget: a lookup that overlapped one is not remembered


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key):
        seconds = settings.AUTH_TOKEN_CACHE_SECONDS
        if seconds <= 0 or not fast_path("remembered_tokens"):
            return super().authenticate_credentials(key)
        now = time.monotonic()
        remembered = _tokens.get(key)
        if remembered is not None and remembered[2] > now:
            return remembered[0], remembered[1]
        pubsub.subscriber()  # subscribed before the lookup, so a change made after it reaches this process
        generation = _generation[0]
        user, token = super().authenticate_credentials(key)  # a bad token or inactive user raises: not remembered
        with _lock:
            if generation == _generation[0]:
                if len(_tokens) >= MAX_TOKENS:
                    _tokens.clear()
                _tokens[key] = (user, token, now + seconds)
        return user, token


class BearerTokenAuthentication(CachedTokenAuthentication):
    """The same tokens, sent as `Authorization: Bearer <key>` (DRF's documented way: another keyword)."""

    keyword = "Bearer"


@memo
def tokens_forget() -> None:
    """Forget every remembered token in this process."""
    with _lock:
        _generation[0] += 1
        _tokens.clear()


def _changed(**_) -> None:
    """A token or a user changed here: forget locally, and tell the other processes (without Redis,
    or with it failing, they follow within AUTH_TOKEN_CACHE_SECONDS)."""
    tokens_forget()
    pubsub.publish(AUTH_CHANNEL, b"1")


def _changed_elsewhere(_data: bytes) -> None:
    tokens_forget()


def signals_connect() -> None:
    """Forget remembered tokens when a token, user or group changes here or in another process."""
    from django.contrib.auth import get_user_model  # noqa: PLC0415 (models: only once apps are ready)
    from django.contrib.auth.models import Group  # noqa: PLC0415
    from rest_framework.authtoken.models import Token  # noqa: PLC0415

    pubsub.subscribe(AUTH_CHANNEL, _changed_elsewhere, missed=tokens_forget)
    user_model = get_user_model()
    for sender in (Token, user_model, Group):
        post_save.connect(_changed, sender=sender, dispatch_uid=f"tokens-forget-save-{sender.__name__}")
        post_delete.connect(_changed, sender=sender, dispatch_uid=f"tokens-forget-delete-{sender.__name__}")
    for through in (user_model.groups.through, user_model.user_permissions.through, Group.permissions.through):
        m2m_changed.connect(_changed, sender=through, dispatch_uid=f"tokens-forget-m2m-{through.__name__}")


def signed_in_user(request: Request) -> User:
    """The request's user, for the API's views: IsAuthenticated (the default permission) lets no anonymous one in."""
    return cast("User", request.user)
