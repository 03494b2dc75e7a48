"""OpenAPI: the exact shape of a text, the limits that depend on settings (filled in per request),
the error bodies and the authentication schemes.

drf-spectacular builds field schemas at import time; the MAX_* limits and the default model are
settings, so fields carry a mark and `settings_limits` (a post-processing hook) fills them in.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension

MARK = "x-mlsite"

# Python's whitespace (str.isspace, what TextField strips), spelled so that ECMA and Python regexes agree.
WHITESPACE_CLASS = r"\t-\r\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# No NUL anywhere, and at least one character that is neither whitespace nor NUL.
TEXT_PATTERN = rf"^[^\u0000]*[^\u0000{WHITESPACE_CLASS}][^\u0000]*$"

TEXT_SCHEMA = {"type": "string", "minLength": 1, "pattern": TEXT_PATTERN, MARK: "text"}
TEXTS_SCHEMA = {"type": "array", "items": TEXT_SCHEMA, "minItems": 1, MARK: "texts"}
FILTER_SCHEMA = {"type": "string", "minLength": 1, "pattern": TEXT_PATTERN}  # a list filter: no NUL, not blank
# A plain string, not an enum: a deployment may serve models a client generated earlier never saw.
MODEL_SCHEMA = {"type": "string", "minLength": 1, MARK: "model"}

# Printable ASCII, 1 to 255, not only spaces (HTTP strips them at either end: the server would see none).
IDEMPOTENCY_KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[ -~]*[!-~][ -~]*$"}

_MESSAGES = {"type": "array", "items": {"type": "string"}}
FIELD_ERRORS_SCHEMA = {  # {"text": ["…"]}, {"texts": {"3": ["…"]}}, {"body": ["JSON parse error - …"]}
    "type": "object",
    "description": "Each bad field (or body, page, request, Idempotency-Key) mapped to its messages; "
    "a list field's messages are keyed by the index of the bad item.",
    "additionalProperties": {"oneOf": [_MESSAGES, {"type": "object", "additionalProperties": _MESSAGES}]},
    "minProperties": 1,
    "example": {"text": ["Must contain at least one non-whitespace character."]},
}


class FieldErrorsExtension(OpenApiSerializerExtension):
    """The 400/422 body, a map no serializer field list can spell: a component of its own."""

    target_class = "predictions.api.serializers.FieldErrorsSerializer"

    def map_serializer(self, auto_schema, direction):
        return FIELD_ERRORS_SCHEMA


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """An http/bearer scheme, so generated clients send the header the server reads; the Token form
    stays documented by drf-spectacular's own TokenAuthentication extension (tokenAuth)."""

    target_class = "predictions.api.authentication.BearerTokenAuthentication"
    name = "bearerAuth"
    priority = 1  # before drf-spectacular's extension, which matches every TokenAuthentication subclass

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <token>: the same tokens."}


def _fill(node, limits: dict) -> None:
    if isinstance(node, dict):
        mark = node.pop(MARK, None)
        if mark:
            node.update(limits[mark])
        for value in node.values():
            _fill(value, limits)
    elif isinstance(node, list):
        for value in node:
            _fill(value, limits)


def settings_limits(result, generator, request, public):
    """maxLength of a text, maxItems of a batch, and the default model as the example, from settings."""
    limits = {
        "text": {"maxLength": settings.MAX_TEXT_CHARS},
        "texts": {"maxItems": settings.API_BATCH_MAX_TEXTS},
        "model": {"example": settings.DEFAULT_MODEL},
    }
    _fill(result.get("components", {}), limits)
    return result
