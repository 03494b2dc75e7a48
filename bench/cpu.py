"""Where the CPU goes during a workload: CPU seconds by part of the stack, read from /proc (Linux).

`CpuMeter.start()` before a workload and `.stop()` after it give, for every running process, the
CPU time it used in between, grouped into the parts of the stack (web, worker, PostgreSQL,
RabbitMQ, Redis, the load generator) and the idle time of the machine. A process that ended in
between (a management command, its database connection) is no longer there to read: what the
machine spent beyond the living processes' CPU goes to "other".
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


def _machine_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of all cores since boot: busy is user, nice, system, irq and softirq
    (guest time is inside user; steal is another machine's), idle is idle and iowait."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    user, nice, system, idle, iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / TICKS, (idle + iowait) / TICKS


class CpuMeter:
    def start(self) -> CpuMeter:
        self.before = _processes()
        self.busy_before, self.idle_before = _machine_seconds()
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds per part since start(). Processes that ended in between are counted in "other":
        the machine's busy time less what the processes still running used."""
        after = _processes()
        busy, idle = _machine_seconds()
        seconds = dict.fromkeys(PARTS, 0.0)
        for pid, (part, used) in after.items():
            before = self.before.get(pid, (part, 0.0))[1]
            seconds[part] += max(0.0, used - before)
        seconds["other"] += max(0.0, (busy - self.busy_before) - sum(seconds.values()))
        seconds["idle"] = max(0.0, idle - self.idle_before)
        return {part: round(value, 2) for part, value in seconds.items()}


def shares(seconds: dict[str, float]) -> dict[str, float]:
    """Each part's share of all the CPU time (idle included), in percent."""
    total = sum(seconds.values()) or 1.0
    return {part: round(100 * value / total, 1) for part, value in seconds.items()}
