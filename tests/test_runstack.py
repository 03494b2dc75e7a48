"""`manage.py runstack` (what `make run` starts) as a real process: a busy address refused before
anything starts, a dead process restarted while the rest keeps serving, SIGTERM and Ctrl-C
stopping everything every time.

Each stack runs on a database of its own (migrated once here), a queue of its own and the test's
Redis (REDIS_URL), or on the embedded default when DATABASE_URL is not PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from bench.stack import PER_STACK_VARIABLES, REAL_SERVICE_VARIABLES, ROOT, fresh_database_url, json_request
from tests.private_services import wait_until

pytestmark = pytest.mark.e2e

EXIT_BOUND_SECONDS = 30  # the stop grace (15 s) and a loaded host's slack


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory, tiny_sentiment_dir, tiny_emotions_dir):
    """The environment every stack here runs with, on a migrated database, and an API token."""
    env = {k: v for k, v in os.environ.items() if k not in REAL_SERVICE_VARIABLES + PER_STACK_VARIABLES}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "DEBUG": "0",
            "MLSITE_MODELS": f"sentiment=path:{tiny_sentiment_dir},emotions=path:{tiny_emotions_dir}",
            "MLSITE_VAR_DIR": str(tmp_path_factory.mktemp("runstack-var")),
            "CELERY_WORKER_CONCURRENCY": "1",
        }
    )
    drop = None
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        database_url, drop = fresh_database_url(os.environ["DATABASE_URL"])
        env.update(
            {
                "DATABASE_URL": database_url,
                "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
                "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13"),
                "CELERY_QUEUE": f"runstack-{uuid.uuid4().hex[:8]}",
            }
        )
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "bootstrap_demo")
        env["TEST_TOKEN"] = manage(env, "drf_create_token", "admin").split()[2]
        yield env
    finally:
        if drop:
            drop()


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runstack(env: dict[str, str], port: int, log: Path, *, python: list[str] | None = None) -> subprocess.Popen:
    """runstack in a session of its own, its output (stdout and stderr) in `log`."""
    command = python or [sys.executable, "manage.py", "runstack"]
    with open(log, "w") as handle:
        return subprocess.Popen(
            [*command, "--bind", f"127.0.0.1:{port}", "--web-workers", "1", "--web-threads", "4"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stack_processes(env: dict[str, str]) -> list[psutil.Process]:
    """Every live process of a stack on this var directory (runstack's children and theirs)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("MLSITE_VAR_DIR") == env["MLSITE_VAR_DIR"] and process.status() != "zombie":
                found.append(process)
    return found


def children_named(runstack_pid: int, word: str, *, without: str = "shadow@") -> list[psutil.Process]:
    """runstack's live children whose command line holds `word` and not `without` (the shadow worker's name)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(runstack_pid).children():
            with contextlib.suppress(psutil.Error):  # one that just died (a zombie) has no command line
                line = " ".join(child.cmdline())
                if word in line and without not in line:
                    found.append(child)
    return found


def healthz(port: int) -> bool:
    with contextlib.suppress(OSError):
        return json_request("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200
    return False


def end(process: subprocess.Popen, env: dict[str, str]) -> None:
    """After a test, whatever happened: nothing of its stack left running."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    for leftover in stack_processes(env):
        with contextlib.suppress(psutil.Error):
            leftover.kill()


# --- A busy address ------------------------------------------------------------------------------


@pytest.mark.parametrize("reuse_port", [False, True], ids=["another-program", "another-granian"])
def test_a_busy_address_is_refused_in_one_line_before_anything_starts(stack_env, tmp_path, reuse_port):
    """Held by a plain listener, or by one with SO_REUSEPORT as a running granian holds it (which a
    second granian would share, splitting the requests between two stacks)."""
    holder = socket.socket()
    if reuse_port:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    process = runstack(stack_env, port, tmp_path / "runstack.log")
    try:
        code = process.wait(timeout=EXIT_BOUND_SECONDS)
        output = (tmp_path / "runstack.log").read_text()
        assert code != 0, output
        assert len(output.strip().splitlines()) == 1, output
        assert f"127.0.0.1:{port}" in output, output
        assert "BIND=" in output, output
        assert stack_processes(stack_env) == []
    finally:
        holder.close()
        end(process, stack_env)


# --- A process that dies -------------------------------------------------------------------------


def test_a_killed_worker_is_restarted_while_the_web_keeps_answering(stack_env, tmp_path):
    port = free_port()
    log = tmp_path / "runstack.log"
    process = runstack(stack_env, port, log)
    try:
        wait_until(lambda: healthz(port), 90, "web answering /healthz", log.read_text)
        wait_until(lambda: children_named(process.pid, " worker "), 30, "a worker", log.read_text)
        [worker] = children_named(process.pid, " worker ")
        wait_until(lambda: worker.children(), 60, "the worker's pool process", log.read_text)
        [shadow] = children_named(process.pid, "shadow@", without="\0")  # the shadow worker, beside it
        assert (shadow.environ()["WORKER_ROLE"], worker.environ().get("WORKER_ROLE", "live")) == ("shadow", "live")
        pool = worker.children()

        worker.kill()  # its main process only: the pool process is left without its parent
        wait_until(
            lambda: [w.pid for w in children_named(process.pid, " worker ")] not in ([], [worker.pid]),
            30,
            "a new worker",
            log.read_text,
        )
        assert healthz(port), log.read_text()
        assert f"worker (pid {worker.pid}) exited with status -9; restarting it in 1 s" in log.read_text()
        psutil.wait_procs(pool, timeout=10)
        assert not [p for p in pool if p.is_running() and p.status() != "zombie"]  # the old pool went with it

        base, token = f"http://127.0.0.1:{port}/api/v1/predictions/", stack_env["TEST_TOKEN"]
        text = f"a film after a restart {uuid.uuid4().hex[:6]}"
        status, body = json_request("POST", f"{base}?wait=30", {"text": text}, token=token, timeout=90)
        if status == 202:  # a loaded host: give the new worker another 30 s
            status, body = json_request("GET", f"{base}{body['id']}/?wait=30", token=token, timeout=90)
        assert status == 200, (body, log.read_text()[-3000:])
        assert body["status"] == "succeeded", body
        assert process.poll() is None
        assert healthz(port)
    finally:
        end(process, stack_env)


# --- Stopping ------------------------------------------------------------------------------------


def _stopped_in_time(process: subprocess.Popen, env: dict[str, str], log: Path, signal_sent: str = "") -> None:
    try:
        process.wait(timeout=EXIT_BOUND_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"runstack still running {EXIT_BOUND_SECONDS} s after {signal_sent or 'the signal'}:\n{log.read_text()[-3000:]}"
        )
    wait_until(lambda: stack_processes(env) == [], 5, "every process of the stack gone", log.read_text)


def test_sigterm_and_ctrl_c_stop_the_stack_every_time_even_during_start_up(stack_env, tmp_path):
    # One signal in each stretch of the start-up, at a random moment within it: while Django sets up,
    # while the web, worker and beat start, and once the stack runs.
    moments = [(signal.SIGINT, 0, 1.5), (signal.SIGTERM, 1.5, 4), (signal.SIGINT, 4, 8)]
    for attempt, (sig, earliest, latest) in enumerate(moments):
        log = tmp_path / f"runstack-{attempt}.log"
        process = runstack(stack_env, free_port(), log)
        try:
            delay = random.uniform(earliest, latest)
            time.sleep(delay)
            os.killpg(process.pid, sig)  # as the terminal sends Ctrl-C: to the foreground group
            _stopped_in_time(process, stack_env, log, f"{sig.name} {delay:.1f} s after the start")
        finally:
            end(process, stack_env)


# Run as runstack's process: Django set up, then a trace that sends SIGTERM from inside threading's
# code at the first moment the main thread holds a Condition's lock (as Event.wait does), once the
# stack has had time to start.
SIGNAL_INSIDE_A_LOCK = """
import os, signal, sys, threading, time
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlsite.settings")
django.setup()
from django.core.management import execute_from_command_line
armed_at = time.monotonic() + 5
fired = []
def in_threading(frame, event, arg):
    if event == "line" and not fired and time.monotonic() > armed_at:
        holder = frame.f_locals.get("self")
        condition = getattr(holder, "_cond", holder)
        if isinstance(condition, threading.Condition) and condition._lock.locked():
            fired.append(1)
            print("signal sent inside threading with a lock held", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
    return in_threading
sys.settrace(lambda frame, event, arg: in_threading if frame.f_code.co_filename == threading.__file__ else None)
execute_from_command_line(["manage.py", "runstack", *sys.argv[1:]])
"""


def test_a_signal_landing_while_the_main_loop_holds_a_lock_still_stops_the_stack(stack_env, tmp_path):
    """A handler that takes a lock (threading.Event.set) deadlocks when the signal lands while the main
    thread holds that lock; the trace makes that moment certain instead of rare. A loop that never
    holds one there is stopped by a plain SIGTERM instead."""
    log = tmp_path / "runstack.log"
    process = runstack(stack_env, free_port(), log, python=[sys.executable, "-c", SIGNAL_INSIDE_A_LOCK])
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        if "signal sent inside threading" not in log.read_text():
            os.kill(process.pid, signal.SIGTERM)
        _stopped_in_time(process, stack_env, log)
    finally:
        end(process, stack_env)
