"""The real web server (granian, as `make run` and the image start it) for the tests that need one."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from bench.stack import ROOT, free_port
from mlsite import webserver


@contextmanager
def web_server(env: dict[str, str], *, timeout: float = 60) -> Iterator[tuple[str, int]]:
    """One granian process (1 worker, 2 threads) on a free port, answering /healthz; yields (base URL, port)."""
    port = free_port()
    command = webserver.command(bind=f"127.0.0.1:{port}", workers=1, threads=2)
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, f"the web server did not answer /healthz in {timeout:g} s"
                time.sleep(0.2)
        yield base, port
    finally:
        server.terminate()
        server.wait(timeout=15)
