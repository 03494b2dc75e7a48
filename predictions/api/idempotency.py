"""Idempotency-Key on the create endpoints: a retry of a keyed POST gets the first response back and creates nothing.

The rows and the recorded response commit in one transaction. A concurrent request with the same key
blocks on the key's unique index until the first commits, then rolls its own rows back and replays the
first response: duplicates never both create, and no request is ever left "in flight".
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from django.db import DatabaseError, IntegrityError, transaction
from drf_spectacular.utils import OpenApiParameter
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mlsite.dbfaults import database_unreachable, reconnecting
from predictions.api.authentication import signed_in_user
from predictions.api.schema import IDEMPOTENCY_KEY_SCHEMA
from predictions.api.serializers import idempotency_key_validate
from predictions.models import IdempotencyKey
from predictions.services.idempotency import (
    idempotency_key_find,
    idempotency_key_record,
    idempotency_key_response_replace,
    request_fingerprint,
)

logger = logging.getLogger(__name__)

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    "Idempotency-Key",
    IDEMPOTENCY_KEY_SCHEMA,
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "1 to 255 printable ASCII characters, unique per request. A retry with the same key (same user, same "
        "endpoint, within IDEMPOTENCY_TTL_HOURS) gets the first response again (status, body, Location; "
        "header Idempotent-Replayed: true) and creates nothing; the same key with a different body is a 422. "
        "A key is the client's promise that two requests are one: use a new one (a UUID) per request."
    ),
)
REPLAYED_HEADER = OpenApiParameter(
    "Idempotent-Replayed",
    {"type": "string", "enum": ["true", "false"]},
    location=OpenApiParameter.HEADER,
    response=[200, 202],
    description='Sent when the request had an Idempotency-Key: "true" on a replayed response, else "false".',
)


def idempotency_key_from(request: Request) -> str | None:
    """The validated Idempotency-Key header (a 400 naming it when bad), or None when the request has none."""
    raw = request.META.get("HTTP_IDEMPOTENCY_KEY")
    return None if raw is None else idempotency_key_validate(raw)


class IdempotentCreateMixin(APIView):
    """A create endpoint whose POST may carry an Idempotency-Key.

    The view says what to create and how to answer: `create(data)` calls the service and returns the
    new object, `answer(obj)` builds the Response (status, body, Location), and `settle(obj)`, after
    commit, may return the object changed (finished within ?wait), whose answer then replaces the
    recorded one. `create_once` runs them, once per key.
    """

    idempotency_endpoint: ClassVar[str]

    def create(self, data: dict) -> Any:
        raise NotImplementedError

    def answer(self, obj: Any) -> Response:
        raise NotImplementedError

    def settle(self, obj: Any) -> Any | None:
        return None

    def create_once(self, data: dict, *, key: str | None) -> Response:
        if key is None:
            obj = self.create(data)
            return self.answer(self.settle(obj) or obj)
        owner = signed_in_user(self.request)
        endpoint, fingerprint = self.idempotency_endpoint, request_fingerprint(data)
        found = idempotency_key_find(owner=owner, key=key, endpoint=endpoint, fingerprint=fingerprint)
        if found is not None:
            return _replay(found)
        try:
            with transaction.atomic():
                obj = self.create(data)
                response = self.answer(obj)
                record = idempotency_key_record(
                    owner=owner,
                    key=key,
                    endpoint=endpoint,
                    fingerprint=fingerprint,
                    status_code=response.status_code,
                    body=response.data,
                    location=response["Location"],
                )
        except IntegrityError:  # the same key, committed first by a concurrent request: its response
            found = idempotency_key_find(owner=owner, key=key, endpoint=endpoint, fingerprint=fingerprint)
            if found is None:
                raise
            return _replay(found)
        settled = self.settle(obj)
        if settled is not None:
            response = self.answer(settled)
            try:
                reconnecting(
                    lambda: idempotency_key_response_replace(
                        record, status_code=response.status_code, body=response.data
                    )
                )
            except DatabaseError as exc:  # the rows are committed: answer; a replay gets the first response
                if not database_unreachable(exc):
                    raise
                logger.warning("idempotency key's finished answer not recorded, database unreachable: %s", exc)
        response["Idempotent-Replayed"] = "false"
        return response


def _replay(record: IdempotencyKey) -> Response:
    headers = {"Location": record.location, "Idempotent-Replayed": "true"}
    return Response(json.loads(record.response_body), status=record.status_code, headers=headers)
