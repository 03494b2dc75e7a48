"""`make audit` (.ci/audit.py): a known vulnerability fails it, a package nobody could check is never silent."""

from __future__ import annotations

import importlib.util
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


def run_audit(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(AUDIT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "AUDIT_STRICT": "", **env},
        timeout=240,
    )


def audit(tmp_path: Path, report: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return run_audit("--report", str(path), *args, **env)


def audit_reports(tmp_path: Path, reports: dict[str, dict]) -> subprocess.CompletedProcess:
    """Judge several saved reports in order, as `make audit` judges requirements.txt's, then requirements-dev.txt's."""
    args = []
    for name, report in reports.items():
        (tmp_path / name).write_text(json.dumps(report))
        args += ["--report", str(tmp_path / name)]
    return run_audit(*args)


def test_a_known_vulnerability_fails_the_audit_naming_the_package_and_the_fix(tmp_path):
    result = audit(tmp_path, VULNERABLE)
    assert result.returncode == 1
    assert "VULNERABLE django==4.2.0: PYSEC-2023-61 (CVE-2023-31047)" in result.stdout
    assert "fixed in: 4.2.1" in result.stdout
    assert "audited 2 of 2 package(s)" in result.stdout


def test_a_package_that_could_not_be_checked_is_reported_and_fails_only_when_strict(tmp_path):
    lenient = audit(tmp_path, UNCHECKED)
    assert lenient.returncode == 0
    assert "NOT AUDITED torch: Dependency not found on PyPI" in lenient.stdout
    assert "audited 1 of 2 package(s)" in lenient.stdout
    assert "(some could not be audited)" in lenient.stdout
    assert audit(tmp_path, UNCHECKED, "--strict").returncode == 2
    assert audit(tmp_path, UNCHECKED, AUDIT_STRICT="1").returncode == 2


def test_when_the_service_answers_for_nothing_the_audit_says_no_check_happened(tmp_path):
    nothing = {"dependencies": [UNCHECKED["dependencies"][1]], "fixes": []}
    result = audit(tmp_path, nothing)
    assert "audited 0 of 1 package(s)" in result.stdout
    assert "answered for none of the packages, so no vulnerability check happened" in result.stdout


def test_the_dev_file_s_report_judges_only_what_the_runtime_file_s_did_not(tmp_path):
    """requirements-dev.txt includes requirements.txt: its report repeats the runtime packages, judged once."""
    runtime = {"dependencies": [VULNERABLE["dependencies"][0], UNCHECKED["dependencies"][1]], "fixes": []}
    dev = {
        "dependencies": [
            *runtime["dependencies"],
            {"name": "pytest", "version": "9.2.0", "vulns": []},
            {"name": "Django", "version": "4.2.1", "vulns": []},  # another version than the runtime's: judged too
        ],
        "fixes": [],
    }
    result = audit_reports(tmp_path, {"requirements.txt.json": runtime, "requirements-dev.txt.json": dev})
    assert result.returncode == 1  # the runtime file's vulnerability fails the whole audit
    assert result.stdout.count("VULNERABLE django==4.2.0") == 1
    assert result.stdout.count("NOT AUDITED torch") == 1
    assert "== requirements.txt.json\n" in result.stdout
    assert "== requirements-dev.txt.json (the packages not judged above)" in result.stdout
    assert "audited 1 of 2 package(s)" in result.stdout
    assert "audited 2 of 2 package(s)" in result.stdout


def test_a_file_that_could_not_be_audited_fails_the_run_and_the_others_are_still_judged(tmp_path):
    result = audit_reports(tmp_path, {"a.json": UNCHECKED, "b.json": VULNERABLE})
    assert result.returncode == 1
    assert "VULNERABLE django==4.2.0" in result.stdout
    missing = run_audit("--report", str(tmp_path / "none.json"), "--report", str(tmp_path / "a.json"))
    assert missing.returncode == 3
    assert "could not audit none.json" in missing.stderr
    assert "audited 1 of 2 package(s)" in missing.stdout  # a.json still judged


def test_pip_audit_itself_runs_on_each_requirements_file_and_their_reports_are_judged(tmp_path):
    """As `make audit` runs on requirements.txt, then on requirements-dev.txt that includes it with -r."""
    (tmp_path / "requirements.txt").write_text("PyYAML==6.0.4\n")  # no dependencies: a small, quick resolution
    (tmp_path / "requirements-dev.txt").write_text("-r requirements.txt\n")
    result = run_audit(  # relative paths are the caller's, not the repository's
        "--requirements", "requirements.txt", "--requirements", "requirements-dev.txt", cwd=tmp_path
    )
    assert "of 1 package(s)" in result.stdout, result.stdout + result.stderr
    assert "audited 0 of 0 package(s)" in result.stdout  # the dev file added nothing: PyYAML judged once
    assert result.returncode in (0, 1)  # 1 only if PyPI knows a vulnerability in that release


def test_make_audit_audits_what_the_image_installs_then_what_development_adds():
    spec = importlib.util.spec_from_file_location("ci_audit", AUDIT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.REQUIREMENTS == [ROOT / "requirements.txt", ROOT / "requirements-dev.txt"]
    assert "\t$(PY) .ci/audit.py $(AUDIT_ARGS)\n" in (ROOT / "Makefile").read_text()  # no --requirements: both
