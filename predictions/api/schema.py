"""OpenAPI: the exact shape of a text, and the limits that depend on settings, filled in per request.

drf-spectacular builds field schemas at import time; the served models and the MAX_* limits are
settings, so fields carry a mark and `settings_limits` (a post-processing hook) fills them in.
"""

from __future__ import annotations

from django.conf import settings

from predictions.registry import model_names

MARK = "x-mlsite"

# Python's whitespace (str.isspace, what TextField strips), spelled so that ECMA and Python regexes agree.
WHITESPACE_CLASS = r"\t-\r\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# No NUL anywhere, and at least one character that is neither whitespace nor NUL.
TEXT_PATTERN = rf"^[^\u0000]*[^\u0000{WHITESPACE_CLASS}][^\u0000]*$"

TEXT_SCHEMA = {"type": "string", "minLength": 1, "pattern": TEXT_PATTERN, MARK: "text"}
TEXTS_SCHEMA = {"type": "array", "items": TEXT_SCHEMA, "minItems": 1, MARK: "texts"}
MODEL_SCHEMA = {"type": "string", MARK: "model"}


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
    """maxLength of a text, maxItems of a batch, and the enum of served model names, from settings."""
    limits = {
        "text": {"maxLength": settings.MAX_TEXT_CHARS},
        "texts": {"maxItems": settings.API_BATCH_MAX_TEXTS},
        "model": {"enum": model_names()},
    }
    _fill(result.get("components", {}), limits)
    return result
