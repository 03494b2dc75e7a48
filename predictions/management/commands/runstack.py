"""Run the web server, a Celery worker, a shadow worker and Celery beat in the foreground, restarting
any that dies; Ctrl-C (SIGINT) or SIGTERM stops them all."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mlsite import webserver
from predictions.monitoring import metrics_dir_reset
from predictions.services.dispatch import shadow_queue

POLL_SECONDS = 0.2  # how often the loop looks at the flag and the processes
RESTART_FIRST_SECONDS = 1.0  # the first restart's delay; it doubles on each death...
RESTART_MAX_SECONDS = 30.0  # ...up to this
STABLE_SECONDS = 60.0  # a process up this long starts again from the first delay
STOP_GRACE_SECONDS = 15.0  # SIGTERM, then SIGKILL after this long


# The variables a process runs with besides the stack's own, as docker-compose.yml sets them: the shadow
# worker has one pool process, whose torch threads take every core live work leaves idle.
STACK_ENV = {"shadow": {"WORKER_ROLE": "shadow", "CELERY_WORKER_CONCURRENCY": "1"}}


def stack_commands(*, bind: str, web_workers: int, web_threads: int) -> dict[str, list[str]]:
    """The processes, as docker-compose.yml runs them; the web is mlsite/webserver.py, as in the image."""
    celery = [os.path.join(os.path.dirname(sys.executable), "celery"), "-A", "mlsite"]
    return {
        "web": webserver.command(bind=bind, workers=web_workers, threads=web_threads),
        "worker": [*celery, "worker", "--loglevel", "INFO", "--queues", settings.CELERY_TASK_DEFAULT_QUEUE],
        # A shadowed version's answers, at the lowest CPU priority (WORKER_ROLE=shadow).
        "shadow": [*celery, "worker", "--loglevel", "INFO", "--queues", shadow_queue(), "--hostname", "shadow@%h"],
        "beat": [*celery, "beat", "--loglevel", "INFO", "--schedule", str(settings.VAR_DIR / "celerybeat-schedule")],
    }


def address_unavailable(bind: str) -> str | None:
    """Why the web server could not listen on `bind`, or None if it can.

    granian binds with SO_REUSEPORT, so a second stack would share a port with the first and split
    its requests. A socket bound without SO_REUSEPORT fails on any listener, a granian one included.
    """
    host, port = webserver.bind_split(bind)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    except (OSError, ValueError) as exc:
        return f"not an address to listen on ({exc})"
    with socket.socket(family, kind, proto) as sock:
        # As granian does: connections of an earlier run left in TIME_WAIT are no conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return (exc.strerror or str(exc)).lower()
    return None


class Child:
    """One supervised process: its command, the running process, and when to start it again."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        self.name, self.command, self.env = name, command, env or {}
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restart_at = 0.0  # when to start it again (monotonic); 0: not waiting to
        self.delay = RESTART_FIRST_SECONDS

    def start(self) -> subprocess.Popen:
        # A session of its own: the terminal's Ctrl-C reaches runstack only, which stops each child itself.
        self.process = subprocess.Popen(self.command, start_new_session=True, env={**os.environ, **self.env})
        self.started_at = time.monotonic()
        self.restart_at = 0.0
        return self.process

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def kill_group(self) -> None:
        """SIGKILL whatever is left of its process group (a dead Celery worker's pool processes)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def schedule_restart(self, now: float) -> float:
        """The delay before the next start: doubling from the first, from the first again after a stable run."""
        if now - self.started_at >= STABLE_SECONDS:
            self.delay = RESTART_FIRST_SECONDS
        delay = self.delay
        self.delay = min(self.delay * 2, RESTART_MAX_SECONDS)
        self.restart_at = now + delay
        return delay


class Command(BaseCommand):
    help = "Run web (granian), worker and beat together, restarting any that dies, until Ctrl-C or SIGTERM."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", default=webserver.DEFAULT_BIND, help="the web server's HOST:PORT")
        parser.add_argument("--web-workers", type=int, default=webserver.DEFAULT_WORKERS, help="web server processes")
        parser.add_argument("--web-threads", type=int, default=webserver.DEFAULT_THREADS, help="threads a web process")

    def handle(self, *args, bind: str, web_workers: int, web_threads: int, **options) -> None:
        # The handler only counts: anything that takes a lock (threading.Event.set) can deadlock
        # when the signal lands while the main loop holds that lock.
        self.signals = 0

        def stop(*_) -> None:
            self.signals += 1

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        unavailable = address_unavailable(bind)
        if unavailable:
            raise CommandError(
                f"cannot listen on {bind}: {unavailable}; choose another address: "
                f"make run BIND=127.0.0.1:8001 (manage.py runstack --bind HOST:PORT)"
            )
        # Every process that wrote metrics there is gone: start the counts afresh with this stack.
        metrics_dir_reset(settings.PROMETHEUS_MULTIPROC_DIR)
        commands = stack_commands(bind=bind, web_workers=web_workers, web_threads=web_threads)
        children = [Child(name, command, STACK_ENV.get(name)) for name, command in commands.items()]
        self.supervise(children)
        self.stop(children)
        self.stdout.write("stack stopped")

    def stopping(self) -> bool:
        return self.signals > 0

    def supervise(self, children: list[Child]) -> None:
        """Start each child, and again (after its backoff) whenever it exits, until a signal comes."""
        while not self.stopping():
            now = time.monotonic()
            for child in children:
                if self.stopping():  # a signal during start-up: start nothing more
                    break
                if child.process is None or (child.restart_at and now >= child.restart_at):
                    verb = "restarted" if child.process else "started"
                    process = child.start()
                    self.stdout.write(f"{verb} {child.name} (pid {process.pid}): {' '.join(child.command)}")
                elif child.process is not None and not child.restart_at and child.process.poll() is not None:
                    child.kill_group()  # a dead Celery worker leaves its pool processes behind
                    delay = child.schedule_restart(now)
                    self.stderr.write(
                        f"{child.name} (pid {child.process.pid}) exited with status {child.process.returncode};"
                        f" restarting it in {delay:g} s"
                    )
            time.sleep(POLL_SECONDS)

    def stop(self, children: list[Child]) -> None:
        """SIGTERM to each main process (granian and Celery stop their own children gracefully), SIGKILL
        to every group after the grace period or on a second signal."""
        signals = self.signals
        for child in children:
            child.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while any(c.running() for c in children) and time.monotonic() < deadline and self.signals == signals:
            time.sleep(POLL_SECONDS)
        for child in children:
            child.kill_group()
            if child.process is not None:
                child.process.wait()
