"""`make audit`: pip-audit on requirements.txt, judged so that a package nobody could check is never silent.

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


def pip_audit_report(requirements: Path, service: str) -> dict:
    """Run pip-audit on the requirements file and return its JSON report."""
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        out = Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-m",
            "pip_audit",
            "--requirement",
            str(requirements),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    parser.add_argument("--service", default="pypi", choices=["pypi", "osv"], help="pip-audit's vulnerability service")
    parser.add_argument(
        "--strict",
        action="store_true",
        default=os.environ.get("AUDIT_STRICT", "") not in ("", "0"),
        help="also fail when a package could not be audited (AUDIT_STRICT=1)",
    )
    parser.add_argument("--report", type=Path, help="judge this saved pip-audit JSON report instead of running it")
    args = parser.parse_args(argv)
    try:
        report = (
            json.loads(args.report.read_text()) if args.report else pip_audit_report(args.requirements, args.service)
        )
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"FAILED: could not audit: {exc}", file=sys.stderr)
        return 3
    return judge(report, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
