"""`make fuzz`: schemathesis against the project's own OpenAPI schema, on a running stack.

Starts the stack as `make run` does (PostgreSQL + RabbitMQ + Redis by default, a fresh database;
`--embedded` for the embedded default), authenticates with the demo token, and lets schemathesis
generate requests for every operation in /api/schema/. A run fails on any 5xx, on a status code,
content type, header or body the schema does not document, on schema-violating input that is
accepted, on a request served without the token, and on an unsupported method not answered 405.
The stack's log tail is printed when it fails, so a 500's traceback is at hand. Arguments this
script does not know go to `schemathesis run`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import Stack, real_services_env  # noqa: E402

CHECKS = "all"  # every check schemathesis has; bench/schemathesis.toml says what each expects


def stack_start(var_dir: Path, *, embedded: bool) -> tuple[Stack, callable]:
    """The stack on the real services (a fresh database, a queue of its own) or on the embedded default."""
    # One user sends every request: rate limits off, so examples reach the views instead of a 429.
    env = {"LOG_LEVEL": "WARNING", "THROTTLE_SUBMIT": "", "THROTTLE_READ": ""}
    cleanup = lambda: None  # noqa: E731
    if not embedded:
        services, cleanup = real_services_env(queue_prefix="fuzz", redis_db=12)
        env.update(services)
    stack = Stack(var_dir, web_workers=2, **env)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        cleanup()
        raise
    return stack, cleanup


def served_models(stack: Stack) -> str:
    """The stack's model names, comma-separated, as GET /api/v1/models/ lists them (for bench/fuzz_hooks.py)."""
    request = urllib.request.Request(f"{stack.base}/api/v1/models/", headers={"Authorization": f"Token {stack.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return ",".join(model["name"] for model in json.load(response))


def schemathesis_command(stack: Stack, args, extra: list[str]) -> list[str]:
    command = [
        os.path.join(os.path.dirname(sys.executable), "schemathesis"),
        "--config-file",
        str(ROOT / "bench" / "schemathesis.toml"),
        "run",
        f"{stack.base}/api/schema/",
        "--header",
        f"Authorization: Token {stack.token}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(args.max_examples),
        "--phases",
        args.phases,
        "--workers",
        str(args.workers),
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--no-color",
    ]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    return command + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--max-examples", type=int, default=500, help="examples per operation and phase")
    parser.add_argument("--phases", default="examples,coverage,fuzzing,stateful", help="schemathesis phases")
    # One by default: with two, hypothesis' ast.parse in both threads can fail on Python 3.11
    # ("SystemError: AST constructor recursion depth mismatch", CPython gh-106905), a runtime error.
    parser.add_argument("--workers", type=int, default=1, help="concurrent schemathesis workers")
    parser.add_argument("--seed", type=int, default=None, help="make the run reproducible")
    parser.add_argument("--embedded", action="store_true", help="the embedded default instead of the real services")
    args, extra = parser.parse_known_args(argv)  # the rest goes to schemathesis
    with tempfile.TemporaryDirectory(prefix="mlsite-fuzz-") as tmp:
        stack, cleanup = stack_start(Path(tmp), embedded=args.embedded)
        try:
            print(
                f"stack ready on :{stack.port} ({'embedded default' if args.embedded else 'PostgreSQL + RabbitMQ + Redis'})",
                flush=True,
            )
            hooks = {"SCHEMATHESIS_HOOKS": str(ROOT / "bench" / "fuzz_hooks.py"), "FUZZ_MODELS": served_models(stack)}
            command = schemathesis_command(stack, args, extra)
            print(" ".join(command).replace(stack.token, "<token>"), flush=True)  # what ran, to rerun it by hand
            code = subprocess.run(command, cwd=tmp, env={**os.environ, **hooks}).returncode
            if code != 0:
                print(f"\nschemathesis exited with {code}; the stack's log ends with:\n{stack.logs()}", flush=True)
        finally:
            stack.stop()
            cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
