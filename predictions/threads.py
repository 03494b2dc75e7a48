"""Torch thread settings for worker processes."""

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
