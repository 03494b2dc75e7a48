"""`make audit` (.ci/audit.py): a known vulnerability fails it, a package nobody could check is never silent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AUDIT = ROOT / ".ci" / "audit.py"

VULNERABLE = {
    "dependencies": [
        {
            "name": "django",
            "version": "4.2.0",
            "vulns": [{"id": "PYSEC-2023-61", "fix_versions": ["4.2.1"], "aliases": ["CVE-2023-31047"]}],
        },
        {"name": "pyyaml", "version": "6.0.4", "vulns": []},
    ],
    "fixes": [],
}
UNCHECKED = {
    "dependencies": [
        {"name": "pyyaml", "version": "6.0.4", "vulns": []},
        {"name": "torch", "skip_reason": "Dependency not found on PyPI and could not be audited: torch (2.13.0+cpu)"},
    ],
    "fixes": [],
}


def audit(tmp_path: Path, report: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return subprocess.run(
        [sys.executable, str(AUDIT), "--report", str(path), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "AUDIT_STRICT": "", **env},
    )


def test_a_known_vulnerability_fails_the_audit_naming_the_package_and_the_fix(tmp_path):
    result = audit(tmp_path, VULNERABLE)
    assert result.returncode == 1
    assert "VULNERABLE django==4.2.0: PYSEC-2023-61 (CVE-2023-31047)" in result.stdout
    assert "fixed in: 4.2.1" in result.stdout and "audited 2 of 2 package(s)" in result.stdout


def test_a_package_that_could_not_be_checked_is_reported_and_fails_only_when_strict(tmp_path):
    lenient = audit(tmp_path, UNCHECKED)
    assert lenient.returncode == 0
    assert "NOT AUDITED torch: Dependency not found on PyPI" in lenient.stdout
    assert "audited 1 of 2 package(s)" in lenient.stdout and "(some could not be audited)" in lenient.stdout
    assert audit(tmp_path, UNCHECKED, "--strict").returncode == 2
    assert audit(tmp_path, UNCHECKED, AUDIT_STRICT="1").returncode == 2


def test_when_the_service_answers_for_nothing_the_audit_says_no_check_happened(tmp_path):
    nothing = {"dependencies": [UNCHECKED["dependencies"][1]], "fixes": []}
    result = audit(tmp_path, nothing)
    assert "audited 0 of 1 package(s)" in result.stdout
    assert "answered for none of the packages, so no vulnerability check happened" in result.stdout


def test_pip_audit_itself_runs_on_a_requirements_file_and_its_report_is_judged(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("PyYAML==6.0.4\n")  # no dependencies: a small, quick resolution
    result = subprocess.run(
        [sys.executable, str(AUDIT), "--requirements", str(requirements)],
        capture_output=True,
        text=True,
        env={**os.environ, "AUDIT_STRICT": ""},
        timeout=240,
    )
    assert "of 1 package(s)" in result.stdout, result.stdout + result.stderr
    assert result.returncode in (0, 1)  # 1 only if PyPI knows a vulnerability in that release
