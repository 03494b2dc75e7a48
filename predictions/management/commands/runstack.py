"""Run the web server, a Celery worker and Celery beat in the foreground; Ctrl-C stops all three."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand


def web_command(*, bind: str, web_workers: int, web_threads: int) -> list[str]:
    """granian serving the WSGI app: `web_workers` processes, each running requests on `web_threads` threads.

    granian parses HTTP in Rust, outside the GIL; gunicorn's gthread loop, in Python, took about a
    third of the web's CPU (README, Throughput). It keeps no access log: Django writes one JSON line
    per request, with its request id (mlsite/middleware.py). Request line and headers together are
    capped at 16 KiB (the app answers a URL over MAX_URL_BYTES with its own JSON 414); idle request
    threads are kept 10 minutes (the most granian allows), with their database connections. A
    worker process that dies is started again, unless it dies again within about 5 seconds: then
    granian exits, runstack stops the stack, and docker-compose restarts the container.
    A request with ?wait holds its thread while it waits, and connections need not spread evenly
    over the processes: 16 threads a process (the default) let one process hold 16 waiting clients
    (README, Throughput, item 27).
    """
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return [
        os.path.join(os.path.dirname(sys.executable), "granian"),
        "--interface",
        "wsgi",
        "--host",
        "127.0.0.1" if host == "localhost" else host,  # granian takes an address, not a name
        "--port",
        port,
        "--workers",
        str(web_workers),
        "--blocking-threads",
        str(web_threads),
        "--no-ws",
        "--http1-buffer-size",
        "16384",
        "--blocking-threads-idle-timeout",
        "600",
        "--respawn-failed-workers",
        "--workers-kill-timeout",
        "10",
        "mlsite.wsgi:application",
    ]


def stack_commands(*, bind: str, web_workers: int, web_threads: int) -> dict[str, list[str]]:
    """The three processes, as the README and docker-compose.yml run them."""
    python = sys.executable
    bin_dir = os.path.dirname(python)
    return {
        "web": web_command(bind=bind, web_workers=web_workers, web_threads=web_threads),
        "worker": [
            os.path.join(bin_dir, "celery"),
            "-A",
            "mlsite",
            "worker",
            "--loglevel",
            "INFO",
            "--queues",
            settings.CELERY_TASK_DEFAULT_QUEUE,
        ],
        "beat": [
            os.path.join(bin_dir, "celery"),
            "-A",
            "mlsite",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(settings.VAR_DIR / "celerybeat-schedule"),
        ],
    }


class Command(BaseCommand):
    help = "Run web (granian), worker and beat together until Ctrl-C."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8000")
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--web-threads", type=int, default=16)

    def handle(self, *args, bind: str, web_workers: int, web_threads: int, **options) -> None:
        from predictions.monitoring import metrics_dir_reset

        commands = stack_commands(bind=bind, web_workers=web_workers, web_threads=web_threads)
        # Every process that wrote metrics there is gone: start the counts afresh with this stack.
        metrics_dir_reset(settings.PROMETHEUS_MULTIPROC_DIR)
        processes: dict[str, subprocess.Popen] = {}
        stopping = threading.Event()

        def stop(*_) -> None:
            stopping.set()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name, command in commands.items():
            processes[name] = subprocess.Popen(command, start_new_session=True)
            self.stdout.write(f"started {name} (pid {processes[name].pid}): {' '.join(command)}")
        exit_code = 0
        while not stopping.is_set():
            for name, process in processes.items():
                if process.poll() is not None:
                    self.stderr.write(f"{name} exited with status {process.returncode}; stopping the stack")
                    exit_code = 1
                    stopping.set()
            stopping.wait(0.5)
        for process in processes.values():
            if process.poll() is None:
                process.terminate()  # the main process only: granian and celery stop their own children gracefully
        deadline = time.monotonic() + 15
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.stdout.write("stack stopped")
        if exit_code:
            sys.exit(exit_code)
