"""Run the web server, granian, with this project's flags: `python -m mlsite.webserver [--bind HOST:PORT]`.

granian's flags live here only: the Dockerfile's CMD, docker-compose.yml's web service and
`manage.py runstack` (`make run`) all run this module (tests/test_deploy_files.py checks).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

DEFAULT_BIND = "127.0.0.1:8000"  # this machine only; the image passes --bind 0.0.0.0:8000
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 16


def bind_split(bind: str) -> tuple[str, str]:
    """HOST:PORT as granian takes them: an address, not a name ("localhost" is 127.0.0.1; no host is every address)."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return ("127.0.0.1" if host == "localhost" else host), port


def granian_argv(
    *, bind: str = DEFAULT_BIND, workers: int = DEFAULT_WORKERS, threads: int = DEFAULT_THREADS
) -> list[str]:
    """granian serving the WSGI app: `workers` processes, each running requests on `threads` threads.

    granian parses HTTP in Rust, outside the GIL; gunicorn's gthread loop, in Python, took about a
    third of the web's CPU (docs/performance.md, granian as the web server). It keeps no access log: Django writes one JSON line
    per request, with its request id (mlsite/middleware.py). Request line and headers together are
    capped at 16 KiB (the app answers a URL over MAX_URL_BYTES with its own JSON 414); idle request
    threads are kept 10 minutes (the most granian allows), with their database connections. A
    worker process that dies is started again, unless it dies again within about 5 seconds: then
    granian exits, and runstack (or docker-compose) starts it again. granian listens with
    SO_REUSEPORT and has no flag to turn it off, so runstack checks the address is free first.
    A request with ?wait holds its thread while it waits, and connections need not spread evenly
    over the processes: 16 threads a process (the default) let one process hold 16 waiting clients
    (docs/performance.md, Sixteen web threads per process).
    """
    host, port = bind_split(bind)
    return [
        os.path.join(os.path.dirname(sys.executable), "granian"),  # the one installed beside this Python
        "--interface",
        "wsgi",
        "--host",
        host,
        "--port",
        port,
        "--workers",
        str(workers),
        "--blocking-threads",
        str(threads),
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


def command(*, bind: str = DEFAULT_BIND, workers: int = DEFAULT_WORKERS, threads: int = DEFAULT_THREADS) -> list[str]:
    """This module run as a process of its own, as `manage.py runstack` and the tests start the web."""
    return [
        sys.executable,
        "-m",
        "mlsite.webserver",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]


def main(argv: list[str] | None = None) -> None:
    """Replace this process with granian, so that signals (Ctrl-C, docker stop) reach granian itself."""
    parser = argparse.ArgumentParser(prog="python -m mlsite.webserver", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bind", default=DEFAULT_BIND, metavar="HOST:PORT", help="where to listen (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, metavar="N", help="processes (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        metavar="N",
        help="request threads a process (default: %(default)s)",
    )
    parser.add_argument("--print", action="store_true", help="print granian's command line instead of running it")
    args = parser.parse_args(argv)
    argv_granian = granian_argv(bind=args.bind, workers=args.workers, threads=args.threads)
    if args.print:
        print(shlex.join(argv_granian))
        return
    os.execv(argv_granian[0], argv_granian)


if __name__ == "__main__":
    main()
