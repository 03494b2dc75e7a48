"""Idempotency-Key records: the first response to a keyed POST, kept IDEMPOTENCY_TTL_HOURS for its retries.

What a response is (status, body, Location) is the API's business (predictions/api/idempotency.py); this
module stores, finds, replaces and expires the records, and refuses a key reused for another request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from predictions.models import IdempotencyKey
from predictions.selectors import idempotency_key_get

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was used before, by this user on this endpoint, with a different request."""


def request_fingerprint(data: Mapping[str, Any]) -> str:
    """SHA-256 of the validated request: equal for requests that mean the same thing."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def idempotency_key_find(*, owner: User, key: str, endpoint: str, fingerprint: str) -> IdempotencyKey | None:
    """The live record of this user's key on this endpoint, or None (an expired one is deleted here, so
    the key can be used afresh). Raises IdempotencyKeyReused when it was recorded for another request."""
    record = idempotency_key_get(owner=owner, key=key, endpoint=endpoint)
    if record is None:
        return None
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    if record.created_at < cutoff:
        IdempotencyKey.objects.filter(pk=record.pk, created_at__lt=cutoff).delete()
        return None
    if record.request_sha256 != fingerprint:
        raise IdempotencyKeyReused(
            "This key was already used for a different request to this endpoint; "
            "send a new key for a new request (keys expire after IDEMPOTENCY_TTL_HOURS)."
        )
    return record


def idempotency_key_record(
    *, owner: User, key: str, endpoint: str, fingerprint: str, status_code: int, body: Any, location: str
) -> IdempotencyKey:
    """Record the first response to a key. Raises IntegrityError when a concurrent request with the same
    key recorded it first (the key's unique index): the caller rolls its own rows back and replays that one."""
    return IdempotencyKey.objects.create(
        owner=owner,
        key=key,
        endpoint=endpoint,
        request_sha256=fingerprint,
        status_code=status_code,
        response_body=json.dumps(body, cls=DjangoJSONEncoder),
        location=location,
    )


def idempotency_key_response_replace(record: IdempotencyKey, *, status_code: int, body: Any) -> None:
    """Replace the recorded response (a ?wait that saw the row finish answers 200: retries get that)."""
    IdempotencyKey.objects.filter(pk=record.pk).update(
        status_code=status_code, response_body=json.dumps(body, cls=DjangoJSONEncoder)
    )


def idempotency_keys_expire(*, max_rows: int) -> int:
    """Delete up to `max_rows` keys older than IDEMPOTENCY_TTL_HOURS (run by the sweeper)."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    ids = list(IdempotencyKey.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:max_rows])
    return IdempotencyKey.objects.filter(pk__in=ids).delete()[0] if ids else 0
