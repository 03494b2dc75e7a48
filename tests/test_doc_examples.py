"""The curl examples in README.md and docs/api.md, pasted in order on a fresh stack, answer as shown.

Each block of curl commands is checked against the documentation around it: the status in bold in
the prose before it (`**202**`), and, where a ```json block follows at once, that answer. A shown
answer may leave fields out (`, …}`), and a string with `…` in it stands for any value; numbers
agree to within 0.01.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.stack import Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED_BASE = "http://127.0.0.1:8000"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
STATUS_MARK = "\n%{http_code}"


@dataclass
class Example:
    line: int
    commands: list[str]
    statuses: set[int]
    shown: str | None


def examples(path: Path) -> list[Example]:
    text = path.read_text()
    blocks = []  # (prose before, language, body, line)
    position = 0
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((text[position : match.start()], match.group(1), match.group(2), line))
        position = match.end()
    found = []
    for index, (prose, _, body, line) in enumerate(blocks):
        commands = [c.strip() for c in body.replace("\\\n", " ").splitlines() if c.strip().startswith("curl ")]
        if not commands:
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        shown = following[2] if following and following[1] == "json" and not following[0].strip() else None
        statuses = {int(s) for s in re.findall(r"\*\*(\d{3})\*\*", prose)}
        found.append(Example(line, commands, statuses, shown))
    return found


def parse_shown(shown: str):
    """The shown answer as JSON: `…` standing for left-out fields is dropped."""
    return json.loads(re.sub(r",\s*…(?=\s*[}\]])", "", shown))


def agrees(actual, shown) -> bool:
    if isinstance(shown, str) and "…" in shown:
        return actual is not None
    if isinstance(shown, dict):
        return isinstance(actual, dict) and all(k in actual and agrees(actual[k], v) for k, v in shown.items())
    if isinstance(shown, list):
        return isinstance(actual, list) and len(actual) == len(shown) and all(map(agrees, actual, shown))
    if isinstance(shown, float) and not isinstance(shown, bool):
        return isinstance(actual, int | float) and abs(actual - shown) <= 0.01
    return actual == shown


def test_the_shown_answer_format():
    shown = parse_shown('{"id": 1, "model": {"name": "x", …}, "version": "…12 hex digits…", …}')
    assert agrees({"id": 1, "model": {"name": "x", "v": 2}, "version": "abc", "more": 1}, shown)
    assert not agrees({"id": 2, "model": {"name": "x"}, "version": "abc"}, shown)
    assert not agrees({"id": 1, "model": {"name": "x"}}, shown)  # a shown field is missing
    assert agrees({"score": 0.987}, {"score": 0.99})
    assert not agrees({"score": 0.9}, {"score": 0.99})
    assert not agrees({"labels": ["a", "b"]}, {"labels": ["a"]})


@pytest.mark.parametrize("page", ["README.md", "docs/api.md"])
def test_every_example_answers_as_shown_when_pasted_in_order(page, tmp_path):
    found = examples(ROOT / page)
    assert len(found) >= 8, found
    for example in found:
        assert len(example.statuses) == 1, f"{page}:{example.line}: say the status in bold once before the block"
    # What a new user runs: `make run` on a fresh clone, the embedded default, debug on.
    stack = Stack(tmp_path, DEBUG="1").start()
    try:
        for example in found:
            (status,) = example.statuses
            for command in example.commands:
                command = command.replace(DOCUMENTED_BASE, stack.base).replace(
                    "curl -s", f"curl -s -w '{STATUS_MARK}'", 1
                )
                result = subprocess.run(
                    ["bash", "-c", command], env={**stack.env, "TOKEN": stack.token}, capture_output=True, text=True
                )
                body, _, code = result.stdout.rpartition("\n")
                where = f"{page}:{example.line}: {command}"
                assert int(code or 0) == status, (where, result.stdout, result.stderr)
            if example.shown:
                shown = parse_shown(example.shown.replace(DOCUMENTED_BASE, stack.base))
                assert agrees(json.loads(body), shown), (where, body)
    finally:
        stack.stop()
