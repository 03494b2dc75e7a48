"""The CPU the `reprocess` command itself spends to archive and requeue N finished rows.

Run it against a scratch database and queue: it adds N finished rows, migrating first, then times
`manage.py reprocess --all` (queued mode: the rows are requeued and their chunks published, nothing
runs them here). For example:

    createdb -h 127.0.0.1 -U postgres scratch_reprocess
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/scratch_reprocess CELERY_QUEUE=scratch-reprocess \\
        python bench/reprocess_cost.py --rows 10000

It prints the command's wall time, its user and system CPU seconds (its own process), and the
CPU seconds PostgreSQL's processes spent meanwhile (when the server runs on this host). Set
FAST_PATHS_OFF=archive_by_select to time Django's way of archiving (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def postgres_cpu_seconds() -> float:
    """User + system CPU of this host's PostgreSQL processes, the backends that exited included
    (their time is in the postmaster's children's)."""
    import psutil  # noqa: PLC0415 (a dev tool)

    total = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] not in ("postgres", "postmaster"):
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL") or not os.environ.get("CELERY_QUEUE"):
        sys.exit("set DATABASE_URL and CELERY_QUEUE to a scratch database and queue: this adds rows and messages")
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], check=True)
    subprocess.run(
        [
            *manage,
            "shell",
            "-c",
            "from django.contrib.auth.models import User; from django.utils import timezone; "
            "from predictions.models import Prediction; "
            "u, _ = User.objects.get_or_create(username='bench-reprocess'); now = timezone.now(); "
            "Prediction.objects.bulk_create([Prediction(owner=u, text=f'text number {i} to re-run', "
            "text_sha256=f'{i:064x}', model_name='sentiment', model_version='v0', status='succeeded', "
            "label='positive', score=0.9, scores={'positive': 0.9, 'negative': 0.1}, finished_at=now, attempts=1) "
            f"for i in range({args.rows})], batch_size=1000)",
        ],
        check=True,
        capture_output=True,
    )
    started, database_before = time.monotonic(), postgres_cpu_seconds()
    process = subprocess.Popen([*manage, "reprocess", "--all"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall, database = time.monotonic() - started, postgres_cpu_seconds() - database_before
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("reprocess failed")
    print(
        f"reprocess --all of {args.rows} rows: {wall:.2f} s wall, {usage.ru_utime:.2f} s user, {usage.ru_stime:.2f} s sys,"
        f" PostgreSQL {database:.2f} s CPU"
    )


if __name__ == "__main__":
    main()
