"""`make audit`: pip-audit on each requirements file, judged so that a package nobody could check is never silent.

By default it audits requirements.txt (what the image installs), then requirements-dev.txt (what
`make install` adds for development and CI) for the packages the first did not already cover: each
file is resolved on its own, as pip installs it, so the image's packages are the versions it ships.
pip-audit alone exits 0 and prints "No known vulnerabilities found" when the vulnerability service
could not be asked about a package (it lists it as skipped). This script fails (exit 1) on any known
vulnerability, lists every package that was not audited and why, and with --strict (or AUDIT_STRICT=1)
fails on those too (exit 2). It exits 3 when pip-audit itself could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = [ROOT / "requirements.txt", ROOT / "requirements-dev.txt"]


def pip_audit_report(requirements: Path, service: str) -> dict:
    """Run pip-audit on the requirements file and return its JSON report."""
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        out = Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-m",
            "pip_audit",
            "--requirement",
            str(requirements.resolve()),  # relative to the caller's directory, not ROOT
            "--vulnerability-service",
            service,
            "--progress-spinner",
            "off",
            "--format",
            "json",
            "--output",
            str(out),
        ]
        print("$ pip-audit " + " ".join(command[3:-2]), flush=True)
        result = subprocess.run(command, cwd=ROOT)
        if not out.exists():
            raise RuntimeError(f"pip-audit exited {result.returncode} without a report")
        return json.loads(out.read_text())


def judge(report: dict, *, strict: bool) -> int:
    """Print what the report says and return the exit status: 1 vulnerable, 2 unaudited under strict, else 0."""
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if "skip_reason" in d]
    vulnerable = [d for d in dependencies if d.get("vulns")]
    audited = len(dependencies) - len(skipped)
    print(f"audited {audited} of {len(dependencies)} package(s)")
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed release"
            aliases = ", ".join(vuln.get("aliases") or [])
            print(f"VULNERABLE {dep['name']}=={dep['version']}: {vuln['id']}" + (f" ({aliases})" if aliases else ""))
            print(f"    fixed in: {fixed}")
    for dep in skipped:
        print(f"NOT AUDITED {dep['name']}: {dep['skip_reason']}")
    if skipped and not audited:
        print(
            "NOT AUDITED: the vulnerability service answered for none of the packages, so no vulnerability "
            "check happened (see docs/operations.md, Audit)."
        )
    if vulnerable:
        print(f"FAILED: {len(vulnerable)} package(s) with known vulnerabilities; upgrade to a fixed release.")
        return 1
    if skipped and strict:
        print(f"FAILED (--strict): {len(skipped)} package(s) could not be audited.")
        return 2
    print("no known vulnerability among the audited packages" + (" (some could not be audited)" if skipped else ""))
    return 0


def audit_all(sources: list[Path], *, saved: bool, service: str, strict: bool) -> int:
    """Judge each file's report in turn, a package already judged (same version) only once; the worst status:
    1 vulnerable, else 3 a file could not be audited, else 2 unaudited under strict, else 0."""
    judged: set[tuple[str, str]] = set()
    statuses = []
    for source in sources:
        print(f"== {source.name}" + (" (the packages not judged above)" if judged else ""), flush=True)
        try:
            report = json.loads(source.read_text()) if saved else pip_audit_report(source, service)
        except (RuntimeError, OSError, ValueError) as exc:
            print(f"FAILED: could not audit {source.name}: {exc}", file=sys.stderr)
            statuses.append(3)
            continue
        fresh = [d for d in report.get("dependencies", []) if _key(d) not in judged]
        judged.update(_key(d) for d in fresh)
        statuses.append(judge({"dependencies": fresh}, strict=strict))
    return next((code for code in (1, 3, 2) if code in statuses), 0)


def _key(dependency: dict) -> tuple[str, str]:
    return dependency["name"].lower(), dependency.get("version", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--requirements",
        type=Path,
        action="append",
        help="a requirements file to audit, repeatable (default: requirements.txt, then requirements-dev.txt)",
    )
    parser.add_argument("--service", default="pypi", choices=["pypi", "osv"], help="pip-audit's vulnerability service")
    parser.add_argument(
        "--strict",
        action="store_true",
        default=os.environ.get("AUDIT_STRICT", "") not in ("", "0"),
        help="also fail when a package could not be audited (AUDIT_STRICT=1)",
    )
    parser.add_argument(
        "--report", type=Path, action="append", help="judge this saved pip-audit JSON report instead (repeatable)"
    )
    args = parser.parse_args(argv)
    sources = args.report or args.requirements or REQUIREMENTS
    return audit_all(sources, saved=bool(args.report), service=args.service, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
