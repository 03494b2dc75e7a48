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

from mlsite import webserver
from predictions.monitoring import metrics_dir_reset


def stack_commands(*, bind: str, web_workers: int, web_threads: int) -> dict[str, list[str]]:
    """The three processes, as docker-compose.yml runs them; the web is mlsite/webserver.py, as in the image."""
    bin_dir = os.path.dirname(sys.executable)
    return {
        "web": webserver.command(bind=bind, workers=web_workers, threads=web_threads),
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
        parser.add_argument("--bind", default=webserver.DEFAULT_BIND, help="the web server's HOST:PORT")
        parser.add_argument("--web-workers", type=int, default=webserver.DEFAULT_WORKERS, help="web server processes")
        parser.add_argument("--web-threads", type=int, default=webserver.DEFAULT_THREADS, help="threads a web process")

    def handle(self, *args, bind: str, web_workers: int, web_threads: int, **options) -> None:
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
