"""Schemathesis hooks for `make fuzz` (bench/fuzz.py loads them through SCHEMATHESIS_HOOKS).

Two rules in the schema depend on the deployment's state, which a schema cannot spell: `model` is
any string the server finds among its served models (GET /api/v1/models/; an unknown one is a 400
naming `model`), and `page` must not lie past the last page (a 400 naming `page`). A schema-valid
case (positive mode) therefore gets a served model's name and the first page, so that
positive_data_acceptance still holds every other field to the schema. Negative cases are left as
generated: they must be refused.
"""

from __future__ import annotations

import os
import zlib

import schemathesis

MODELS = [name for name in os.environ.get("FUZZ_MODELS", "").split(",") if name]  # set by bench/fuzz.py


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    body = case.body
    if MODELS and isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"] not in MODELS:
        body["model"] = MODELS[zlib.crc32(body["model"].encode()) % len(MODELS)]  # varied, and repeatable by seed
    if case.query and "page" in case.query:
        case.query["page"] = 1
    return case
