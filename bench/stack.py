"""Start the whole service as `make run` does (manage.py runstack) in a directory of its own.

Used by the end-to-end tests and by `make bench`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
REAL_SERVICE_VARIABLES = ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "CELERY_QUEUE", "MLSITE_MODELS")
# Derived from MLSITE_VAR_DIR unless set; a parent's (settings export it) would be the wrong directory.
PER_STACK_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR",)


def json_request(method: str, url: str, body=None, *, token: str = "", timeout: float = 60) -> tuple[int, dict]:
    """One API call: (status, JSON body); a body that is not JSON comes back as {"raw": its start}."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"raw": raw[:500].decode(errors="replace")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """web + worker + beat under `manage.py runstack`, with its own var/ directory and port."""

    def __init__(self, var_dir: Path, *, web_workers: int = 1, web_threads: int = 8, **env: str) -> None:
        self.web_workers, self.web_threads = web_workers, web_threads
        self.var_dir = var_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k not in REAL_SERVICE_VARIABLES + PER_STACK_VARIABLES}
        self.env.update({"MLSITE_VAR_DIR": str(var_dir), "HF_HUB_OFFLINE": "1", "DEBUG": "0", **env})
        self.log = open(var_dir / "stack.log", "w+")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen | None = None
        self.token = ""

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self) -> Stack:
        self.manage("migrate", "--noinput")
        self.manage("bootstrap_demo")
        self.token = self.manage("drf_create_token", "admin").split()[2]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "runstack",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--web-workers",
                str(self.web_workers),
                "--web-threads",
                str(self.web_threads),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.logs()
            try:
                status, body = self.request("GET", "/readyz", auth=False)
                if status == 200 and body.get("status") == "ok":  # "degraded" until a worker answers
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"stack not ready in time:\n{self.logs()}")

    def request(self, method: str, path: str, body=None, *, auth: bool = True) -> tuple[int, dict]:
        return json_request(method, self.base + path, body, token=self.token if auth else "", timeout=90)

    def logs(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-5000:]

    def stop(self) -> int | None:
        """Ctrl-C, as a user would; returns runstack's exit status."""
        code = None
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                code = self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                code = self.process.wait()
        self.log.close()
        return code


def fresh_database_url(admin_url: str) -> tuple[str, callable]:
    """A new, empty PostgreSQL database next to `admin_url`'s, and a function that drops it."""
    name = f"mlsite_run_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


def real_services_env(*, queue_prefix: str, redis_db: int) -> tuple[dict[str, str], callable]:
    """The variables that put a Stack on the real services: a fresh database on DATABASE_URL's server,
    the broker and a Redis db from the environment (this machine's services by default), a queue of
    its own. Returns them and a function that drops the database."""
    database_url, drop = fresh_database_url(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"))
    env = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        "REDIS_URL": os.environ.get("REDIS_URL", f"redis://127.0.0.1:6379/{redis_db}"),
        "CELERY_QUEUE": f"{queue_prefix}-{os.getpid()}",
    }
    return env, drop
