"""`make weigh`: what each framework bypass (mlsite/fastpaths.py) saves on the path it sits on.

Two paths, measured in this process on the database and cache the environment names (a throwaway
test database):

- the web's: one cache-hit `POST /api/v1/predictions/?wait=30` through Django (no HTTP server), the
  request W3 of `make bench` sends; every bypass but the result write sits on it;
- the worker's: writing the results of one forward pass of 16 rows (the result write).

Each round measures every variant (all bypasses on, then each one off: FAST_PATHS_OFF=name) in a
shuffled order, back to back, so the host's drift falls on all of them alike; the report is the
median over the rounds of each variant's cost and of its difference to "all on" in the same round.
Wall time includes the round trips to PostgreSQL and Redis. CPU is this process's plus that of the
PostgreSQL backend serving its connection (read from /proc: the server must run on this host, as it
does under `make bench`); Redis's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django.db import connection  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.utils import timezone  # noqa: E402

from bench.profiling import cache_hit_post, demo_database  # noqa: E402
from mlsite.fastpaths import BYPASSES  # noqa: E402
from predictions.memos import memos_forget  # noqa: E402
from textclf import LabelScores  # noqa: E402

WORKER_BYPASSES = ("one_statement_results",)
ELSEWHERE = ("archive_by_select",)  # on the re-run's path: bench/reprocess_cost.py measures it
PASS_ROWS = 16


def database_cpu() -> float:
    """Seconds of CPU the PostgreSQL backend of this process's connection has used (0 elsewhere)."""
    if connection.vendor != "postgresql":
        return 0.0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # a server on another host
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_now() -> float:
    return time.process_time() + database_cpu()


def timed(call: Callable[[], None], repeats: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per call, over `repeats` calls."""
    began, cpu = time.perf_counter(), cpu_now()
    for _ in range(repeats):
        call()
    return 1000 * (time.perf_counter() - began) / repeats, 1000 * (cpu_now() - cpu) / repeats


class ResultWrite:
    """One forward pass's results written: PASS_ROWS rows claimed and filled first (not timed), then stored."""

    def __init__(self, user) -> None:
        self.user, self.passes = user, 0
        self.answer = LabelScores(label="positive", score=0.9, scores={"negative": 0.1, "positive": 0.9})

    def _claimed(self) -> list:
        from predictions.models import Prediction  # noqa: PLC0415 (models: only after django.setup())
        from predictions.services import worker  # noqa: PLC0415 (models: only after django.setup())

        self.passes += 1
        rows = Prediction.objects.bulk_create(
            Prediction(owner=self.user, text=f"t{self.passes}-{i}", text_sha256="x", model_name="sentiment")
            for i in range(PASS_ROWS)
        )
        task_id = f"weigh-{self.passes}"
        claimed = worker.predictions_claim([r.pk for r in rows], task_id=task_id, limit=PASS_ROWS, others=False)
        for row in claimed:
            worker._row_fill(row, self.answer, version="v1", finished=timezone.now())
        return claimed

    def measure(self, repeats: int) -> tuple[float, float]:
        """(wall ms, CPU ms) per write, over `repeats` writes, timed together once every pass is claimed."""
        from predictions.services import sql  # noqa: PLC0415 (models: only after django.setup())

        passes = [self._claimed() for _ in range(repeats)]
        began, cpu = time.perf_counter(), cpu_now()
        for claimed in passes:
            assert len(sql.results_store(claimed, task_id=claimed[0].task_id)) == PASS_ROWS
        return 1000 * (time.perf_counter() - began) / repeats, 1000 * (cpu_now() - cpu) / repeats


def weigh(rounds: int, requests: int, writes: int) -> None:
    with demo_database() as (user, token):
        post = cache_hit_post(user, token, url="/api/v1/predictions/?wait=30")
        write = ResultWrite(user)
        web = [None, *(name for name in BYPASSES if name not in WORKER_BYPASSES + ELSEWHERE)]
        work = [None, *WORKER_BYPASSES]
        costs: dict[tuple[str, str | None], list[tuple[float, float]]] = {}
        for round_ in range(rounds):
            for path, variants in (("web", web), ("worker", work)):
                order = list(variants)
                random.Random(round_).shuffle(order)
                for off in order:
                    with override_settings(FAST_PATHS_OFF=frozenset({off} if off else ())):
                        memos_forget()
                        if path == "web":
                            timed(post, 20)  # warm: the memos fill again
                            cost = timed(post, requests)
                        else:
                            write.measure(2)
                            cost = write.measure(writes)
                    costs.setdefault((path, off), []).append(cost)
            print(f"round {round_ + 1}/{rounds} done", file=sys.stderr)
        for path, variants, unit in (
            ("web", web, "cache-hit POST ?wait=30"),
            ("worker", work, f"result write of {PASS_ROWS} rows"),
        ):
            base = costs[(path, None)]
            wall0, cpu0 = statistics.median(w for w, _ in base), statistics.median(c for _, c in base)
            print(
                f"\n{path}: {unit}, median of {rounds} rounds; all bypasses on: {wall0:.3f} ms wall, {cpu0:.3f} ms CPU"
            )
            print(f"  {'bypass turned off':<26} {'wall ms':>8} {'CPU ms':>8} {'saves wall':>11} {'saves CPU':>10}")
            for off in variants[1:]:
                runs = costs[(path, off)]
                wall = statistics.median(w for w, _ in runs)
                cpu = statistics.median(c for _, c in runs)
                saved_wall = statistics.median(w - b[0] for (w, _), b in zip(runs, base, strict=True))
                saved_cpu = statistics.median(c - b[1] for (_, c), b in zip(runs, base, strict=True))
                print(
                    f"  {off:<26} {wall:8.3f} {cpu:8.3f} {100 * saved_wall / wall0:10.1f}% {100 * saved_cpu / cpu0:9.1f}%"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200, help="cache-hit POSTs per variant and round")
    parser.add_argument("--writes", type=int, default=20, help="result writes per variant and round")
    args = parser.parse_args()
    weigh(args.rounds, args.requests, args.writes)


if __name__ == "__main__":
    main()
