"""Where the CPU goes during a workload: CPU seconds by part of the stack, read from /proc (Linux).

`CpuMeter.start()` before a workload and `.stop()` after it give, for every running process, the
CPU time it used in between, grouped into the parts of the stack (web, worker, PostgreSQL,
RabbitMQ, Redis, the load generator) and the idle time of the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

PARTS = ("worker", "web", "postgres", "rabbitmq", "redis", "loadgen", "other", "idle")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _part(pid: int, cmdline: str) -> str:
    if pid == os.getpid():
        return "loadgen"
    if "celery" in cmdline and " worker" in cmdline:
        return "worker"
    if "granian" in cmdline or "runserver" in cmdline:
        return "web"
    if "postgres" in cmdline.split(" ", 1)[0]:
        return "postgres"
    if "beam.smp" in cmdline or "rabbitmq" in cmdline:
        return "rabbitmq"
    if "redis-server" in cmdline:
        return "redis"
    return "other"


def _processes() -> dict[int, tuple[str, float]]:
    """pid → (part, CPU seconds used so far) for every process we may read."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": fields 3 onwards
        used = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        found[pid] = (_part(pid, cmdline or stat.split("(", 1)[1].split(")")[0]), used)
    return found


def _idle_seconds() -> float:
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    return (int(first[4]) + int(first[5])) / TICKS  # idle + iowait, all cores


class CpuMeter:
    def start(self) -> CpuMeter:
        self.before = _processes()
        self.idle_before = _idle_seconds()
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds per part since start(); processes that ended in between are not counted."""
        after = _processes()
        seconds = dict.fromkeys(PARTS, 0.0)
        for pid, (part, used) in after.items():
            before = self.before.get(pid, (part, 0.0))[1]
            seconds[part] += max(0.0, used - before)
        seconds["idle"] = max(0.0, _idle_seconds() - self.idle_before)
        return {part: round(value, 2) for part, value in seconds.items()}


def shares(seconds: dict[str, float]) -> dict[str, float]:
    """Each part's share of all the CPU time (idle included), in percent."""
    total = sum(seconds.values()) or 1.0
    return {part: round(100 * value / total, 1) for part, value in seconds.items()}
