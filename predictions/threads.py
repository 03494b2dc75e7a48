"""Torch thread settings and CPU priority for worker processes."""

from __future__ import annotations

import os

from django.conf import settings


def torch_threads_for(processes: int) -> int:
    if settings.TORCH_THREADS:
        return settings.TORCH_THREADS
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def torch_threads_configure(processes: int | None = None) -> int:
    import torch  # noqa: PLC0415 (torch loads lazily: the web never imports it)

    if processes is None:
        processes = settings.CELERY_WORKER_CONCURRENCY
    threads = torch_threads_for(processes)
    torch.set_num_threads(threads)
    return threads


def cpu_priority_lowest() -> str:
    """Run this process (and the threads and processes it starts from now on) only on cores nothing
    else wants: SCHED_IDLE where the kernel has it, else nice 19. No privilege is needed to lower a
    priority. Returns which was set."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):  # not Linux
        os.nice(19 - os.nice(0))
        return "nice 19"
