"""The README and docs/ stay true to the code: a short README, links that resolve, and a settings
table in docs/configuration.md that names exactly the environment variables the code reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
CODE_PACKAGES = ("mlsite", "predictions", "textclf")  # where settings are read (textclf: if present)

FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The page without its fenced code blocks (their `#` lines are not headings, their brackets not links)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, text in HEADING.findall(prose(path.read_text())):
        base = slug(text)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_the_readme_is_at_most_300_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_readme_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme
    assert "make test" in readme


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in LINK.findall(INLINE_CODE.sub("", prose(page.read_text()))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert broken == []


def test_the_pages_keep_no_log_of_work_sessions():
    pattern = re.compile(r"item [0-9]+|this session|the session before|previous session", re.IGNORECASE)
    hits = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for page in PAGES
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_every_decision_record_says_what_it_gained_what_it_costs_and_whether_it_is_kept_or_removed():
    text = (DOCS / "performance.md").read_text()
    decisions = text.split("\n## Decisions\n", 1)[1].split("\n## ", 1)[0]
    records = re.split(r"^### ", decisions, flags=re.MULTILINE)[1:]
    assert len(records) > 20
    for record in records:
        name = record.splitlines()[0]
        for part in ("**What:**", "**Gain:**", "**Cost:**", "**Status:**"):
            assert part in record, f"decision {name!r} lacks {part}"
        status = record.split("**Status:**", 1)[1].strip()
        assert status.startswith(("kept", "rejected", "removed")), f"decision {name!r}: status {status[:30]!r}"


# --- docs/configuration.md's settings table against the code ----------------------------------


def _constant(node: ast.expr):
    """The value of a default made of literals only (`10_000`, `7 * 24 * 3600`, `True`), else None."""
    allowed = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)
    if not all(isinstance(part, allowed) for part in ast.walk(node)):
        return None
    return eval(compile(ast.Expression(node), "<default>", "eval"))  # literals and arithmetic only


def _is_os_environ(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", None) == "os"


def _is_direct_read(func: ast.expr) -> bool:
    """os.environ.get(…) or os.getenv(…)."""
    if not isinstance(func, ast.Attribute):
        return False
    return (func.attr == "get" and _is_os_environ(func.value)) or (
        func.attr == "getenv" and getattr(func.value, "id", None) == "os"
    )


def environment_reads() -> dict[str, tuple[str, object]]:
    """Every environment variable the service's code reads → (helper, literal default or None).

    Calls of the typed helpers (env_int("NAME", default, …) and the like, mlsite/env.py), and direct
    reads: os.environ.get("NAME"), os.getenv("NAME"), os.environ["NAME"]. Writes and setdefault are
    not reads."""
    reads: dict[str, tuple[str, object]] = {}
    files = [
        path
        for package in CODE_PACKAGES
        if (ROOT / package).is_dir()
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    ]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                name = node.args[0].value
                func = node.func
                helper = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if helper.startswith("env_") and isinstance(name, str):
                    default = _constant(node.args[1]) if len(node.args) > 1 else None
                    reads[name] = (helper, default)
                elif isinstance(name, str) and _is_direct_read(func):
                    reads.setdefault(name, ("os.environ", None))
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.ctx, ast.Load)
                and _is_os_environ(node.value)
                and isinstance(node.slice, ast.Constant)
            ):
                reads.setdefault(node.slice.value, ("os.environ", None))
    return reads


def settings_table() -> dict[str, list[str]]:
    """docs/configuration.md, section "## Settings": variable → its row's cells."""
    text = (DOCS / "configuration.md").read_text()
    section = prose(text).split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # past the header and its rule
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip("|").split(" | ")]
        names = re.findall(r"^`([A-Z][A-Z0-9_]*)`$", cells[0])
        assert len(names) == 1, f"one variable per row, in backticks: {row}"
        assert len(cells) == 4, f"name, default, what it governs, production value: {row}"
        assert all(cells), f"name, default, what it governs, production value: {row}"
        assert names[0] not in table, f"{names[0]} has two rows"
        table[names[0]] = cells
    return table


def test_the_settings_table_names_exactly_the_environment_variables_the_code_reads():
    read = set(environment_reads())
    listed = set(settings_table())
    assert len(read) > 50
    assert sorted(read - listed) == [], "read by the code but missing from docs/configuration.md"
    assert sorted(listed - read) == [], "in docs/configuration.md but read nowhere in the code"


def test_the_settings_table_gives_the_defaults_the_code_uses():
    table = settings_table()
    wrong = []
    for name, (helper, default) in environment_reads().items():
        if name not in table:
            continue  # reported by the test above
        cell = table[name][1]
        if isinstance(default, bool):
            expected = "`1`" if default else "`0`"
        elif isinstance(default, int):
            expected = f"`{default}`"
        elif default == "":
            expected = "empty"
        elif helper in ("env_rate", "env_choice") and isinstance(default, str):
            expected = f"`{default}`"
        else:
            continue  # a computed default (e.g. the core count) or a string described in words
        if not cell.startswith(expected):
            wrong.append(f"{name}: the code's default is {default!r}, the table says {cell!r}")
    assert wrong == []
