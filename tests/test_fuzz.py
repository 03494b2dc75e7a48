"""`make fuzz` in short: schemathesis against the running stack's own OpenAPI schema.

The same runner as `make fuzz` (bench/fuzz.py), with few examples and a fixed seed so it is quick
and repeatable, with every check on: no 5xx, every status code, content type, header and body as
the schema documents them, schema-violating input rejected and schema-valid input accepted.
"""

from __future__ import annotations

import os
import re

import pytest

from bench.fuzz import main as fuzz_main

pytestmark = pytest.mark.e2e


def test_a_short_schemathesis_run_against_the_stack_finds_nothing(capfd):
    args = ["--max-examples", "10", "--seed", "20261125"]
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        args.append("--embedded")
    code = fuzz_main(args)
    out = capfd.readouterr().out
    assert code == 0, out[-10_000:]
    assert " --checks all " in out, out[-3000:]  # every check, positive_data_acceptance and the stateful ones too
    assert "6 selected / 6 total" in out, out[-3000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅  {phase}" in out, phase
    assert re.search(r"(\d+) generated, \1 passed", out), out[-3000:]
