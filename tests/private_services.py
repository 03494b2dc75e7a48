"""Private RabbitMQ, Redis and PostgreSQL servers that a fault test may stop, kill and restart.

The shared servers on the standard ports are used by other people and are never touched: each of
these runs on its own free port, from its own temporary directory, as a process the test started.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from bench.stack import free_port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(probe, timeout: float, what: str, details=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{details()}")
        time.sleep(0.1)


def _tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


def missing_tools() -> list[str]:
    """What this machine lacks to run the private servers (empty when all is there)."""
    missing = [tool for tool in ("redis-server",) if not shutil.which(tool)]
    if not Rabbit.executable():
        missing.append("rabbitmq-server")
    if not Postgres.bin_dir():
        missing.append("PostgreSQL server binaries (initdb, pg_ctl)")
    if os.geteuid() != 0 or not shutil.which("runuser"):
        missing.append("root and runuser (PostgreSQL must run as the postgres user)")
    return missing


class Redis:
    """`redis-server` in the foreground, without persistence: kill() loses nothing the service needs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> Redis:
        log = open(self.workdir / "redis.log", "a")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(lambda: port_open(self.port), 15, "private redis-server listening", self.logs)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def logs(self) -> str:
        return _tail(self.workdir / "redis.log")


class Rabbit:
    """A second RabbitMQ node (own node name, ports, Mnesia and log directories, Erlang cookie).

    The Debian wrapper /usr/sbin/rabbitmq-server switches to the rabbitmq user; the script under
    /usr/lib/rabbitmq/bin runs as the caller, so the node's files can live in a temporary directory.
    Its Mnesia directory survives stop()/start(), and so do durable queues and persistent messages.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"mlsite-fault-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.process: subprocess.Popen | None = None
        for name in ("home", "mnesia", "log"):
            (workdir / name).mkdir(exist_ok=True)
        (workdir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (workdir / "enabled_plugins").write_text("[].\n")
        (workdir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's, which names the shared node
        self.env = {
            **os.environ,
            "HOME": str(workdir / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    @staticmethod
    def executable() -> str | None:
        direct = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        return direct if os.access(direct, os.X_OK) else None

    def start(self) -> Rabbit:
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> None:
        log = open(self.workdir / "rabbitmq.out", "a")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen(
            [self.executable()],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self) -> None:
        wait_until(lambda: port_open(self.port), 60, "private RabbitMQ listening", self.logs)

    def stop(self) -> None:
        """A clean shutdown: SIGTERM to the start script, which stops the node as `rabbitmqctl stop` would."""
        self._end(signal.SIGTERM, group=False)

    def kill(self) -> None:
        """A crash: SIGKILL to the node and everything it started."""
        self._end(signal.SIGKILL, group=True)

    def pause(self) -> None:
        """SIGSTOP to the Erlang VM: connections are still accepted by the kernel, nothing answers (a hung broker)."""
        for process in self._vm():
            process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self._vm():
            process.send_signal(signal.SIGCONT)

    def _vm(self) -> list:
        if self.process is None or self.process.poll() is not None:
            return []
        return [p for p in psutil.Process(self.process.pid).children(recursive=True) if p.name().startswith("beam")]

    def _end(self, sig: int, *, group: bool) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()  # a stopped VM would not act on SIGTERM
        with contextlib.suppress(ProcessLookupError):
            if group:  # its own session: the script, beam.smp and its helpers
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        wait_until(lambda: not port_open(self.port), 30, "private RabbitMQ gone", self.logs)

    def logs(self) -> str:
        return _tail(self.workdir / "rabbitmq.out")


class Postgres:
    """A PostgreSQL cluster of its own (initdb in a temporary directory owned by the postgres user)."""

    def __init__(self) -> None:
        # pytest's tmp_path is private to root; the postgres user needs a directory it owns.
        self.workdir = Path(tempfile.mkdtemp(prefix="mlsite-faults-pg-"))
        shutil.chown(self.workdir, user="postgres")
        self.data = self.workdir / "data"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/mlsite"
        self.admin_url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def bin_dir() -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if found:
            return Path(found[-1]).parent
        pg_ctl = shutil.which("pg_ctl")
        return Path(pg_ctl).resolve().parent if pg_ctl else None

    def _as_postgres(self, tool: str, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin_dir() / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )
        assert result.returncode == 0, f"{tool} {' '.join(args)}: {result.stdout}{result.stderr}\n{self.logs()}"
        return result.stdout

    def _options(self) -> str:
        return f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"

    def start(self) -> Postgres:
        if not self.data.exists():
            self._as_postgres(
                "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"
            )
        log = str(self.workdir / "postgres.log")
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", self._options(), "-l", log, "-w", "start")
        return self

    def restart(self) -> None:
        """Fast shutdown (every session is terminated) and start again: what a failover or upgrade does."""
        log = str(self.workdir / "postgres.log")
        self._as_postgres(
            "pg_ctl", "-D", str(self.data), "-o", self._options(), "-l", log, "-m", "fast", "-w", "restart"
        )

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        """An immediate shutdown: every session ends at once, new connections are refused."""
        if self.running():
            self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        return _tail(self.workdir / "postgres.log")
