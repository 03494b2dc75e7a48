"""`make bench-queue`: how many rows a second the database queue moves, and how many messages RabbitMQ does.

The model is left out: what is measured is the work every row costs besides its forward pass.

- **claim → write**: a throwaway test database holds queued rows (bulk lane, as API batches leave
  them). K processes, each with its own connection, loop: claim up to `--claim` rows with the
  worker's own claim (`services.worker.predictions_claim`), fill each with a fixed answer (an
  instant stub model), write them with the worker's own write (`services.worker._results_write`:
  the cache fill, the one-statement result UPDATE, the notification). Rows/s is rows written over
  the wall time, for K = 1, 2, 4, 8, 16, 32.
- **publish → consume**: K consumer processes take messages from a scratch RabbitMQ queue (acked
  one by one, prefetch 4 as a Celery worker process has) while one publisher sends them with
  publisher confirms, the body a run task's: a list of row ids.

Two options show what lies past the ceiling (`docs/scaling.md`, "Past the ceiling"):

- `--history N`: N finished rows (30 days of them) sit in the table beside the queued ones, as a
  service that keeps every prediction has: what a big table costs the claim, the question
  partitioning by time answers.
- `--readers R`: R more processes load the admin overview's figures and the prediction list's first
  page, over and over, while the claimers run: what the review desk's reads cost the queue, the
  question read replicas answer. Each line then also gives the pages a second they served.

Each line also says where the CPU went (bench/cpu.py): on a host where the claimers, PostgreSQL
and RabbitMQ share the cores, the ceiling is the host's, and the split says which part would need
a host of its own first. It uses the database, broker and Redis the environment names (as
`make test` does).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu import CpuMeter  # noqa: E402
from bench.profiling import demo_database  # noqa: E402


def _rows_fill(user, n: int) -> None:
    from predictions.models import Lane, Prediction, PredictionStatus  # noqa: PLC0415 (after django.setup())

    tag = uuid.uuid4().hex[:8]
    Prediction.objects.bulk_create(
        (
            Prediction(
                owner=user,
                text=f"row {tag}-{i}",
                text_sha256=f"{tag}{i:056x}",
                model_name="sentiment",
                status=PredictionStatus.QUEUED,
                lane=Lane.BULK,
                turn=i,
            )
            for i in range(n)
        ),
        batch_size=2000,
    )


def _history_fill(user, n: int) -> None:
    """N finished rows spread over the last 30 days, as the review desk's history: inserted in
    chunks of 5,000 so that memory stays flat."""
    from datetime import timedelta  # noqa: PLC0415

    from django.utils import timezone  # noqa: PLC0415 (after django.setup())

    from predictions.models import Lane, Prediction, PredictionStatus  # noqa: PLC0415

    now, tag, chunk = timezone.now(), uuid.uuid4().hex[:8], 5000
    for first in range(0, n, chunk):
        rows = []
        for i in range(first, min(n, first + chunk)):
            created = now - timedelta(seconds=(i * 2_591_999) // max(n, 1))
            positive = i % 3 != 0
            rows.append(
                Prediction(
                    owner=user,
                    text=f"history {tag}-{i}",
                    text_sha256=f"h{tag}{i:055x}",
                    model_name="sentiment",
                    model_version="stub",
                    status=PredictionStatus.SUCCEEDED,
                    label="positive" if positive else "negative",
                    score=0.9,
                    scores={"negative": 0.1, "positive": 0.9} if positive else {"negative": 0.9, "positive": 0.1},
                    lane=Lane.INTERACTIVE,
                    created_at=created,
                    started_at=created,
                    finished_at=created + timedelta(milliseconds=40),
                )
            )
        Prediction.objects.bulk_create(rows)


def _reader(start, stop, pages) -> None:
    """The review desk's reads, over and over: the overview's figures, then the prediction list's
    first page (its count and its 100 newest rows, as the admin's changelist asks for them)."""
    from django.db import connections  # noqa: PLC0415 (after django.setup())

    from predictions.models import Prediction  # noqa: PLC0415
    from predictions.overview import overview_figures  # noqa: PLC0415

    connections.close_all()
    start.wait()
    served = 0
    while not stop.is_set():
        overview_figures()
        Prediction.objects.count()
        list(Prediction.objects.select_related("owner").order_by("-created_at", "-pk")[:100])
        served += 2
    with pages.get_lock():
        pages.value += served


def _claimer(claim: int, seconds: float, start, end, written) -> None:
    """One worker process's loop without the model: claim, fill, write, until `seconds` or no rows left."""
    from django.db import connections  # noqa: PLC0415 (after django.setup())
    from django.utils import timezone  # noqa: PLC0415

    from predictions.memos import memos_forget  # noqa: PLC0415
    from predictions.services import worker  # noqa: PLC0415
    from textclf import LabelScores  # noqa: PLC0415

    connections.close_all()  # the parent's connection must not be shared: this process opens its own
    memos_forget()  # and its own Redis client
    answer = LabelScores(label="positive", score=0.9, scores={"negative": 0.1, "positive": 0.9})
    task_id, count = f"queue-bench-{os.getpid()}", 0
    start.wait()
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        rows = worker.predictions_claim([], task_id=task_id, limit=claim, others=True)
        if not rows:
            break
        for row in rows:
            worker._row_fill(row, answer, version="stub", finished=timezone.now())
        count += worker._results_write("sentiment", "stub", rows, [answer] * len(rows), task_id=task_id)["succeeded"]
    with written.get_lock():
        written.value += count
    end.wait()  # the run's end: the parent reads the CPU while this process and its database backend live
    end.wait()  # let go


def claim_write(user, *, claimers: int, claim: int, seconds: float, rows: int, readers: int = 0) -> dict:
    from django.db import connection, connections  # noqa: PLC0415 (after django.setup())

    from predictions.models import Prediction  # noqa: PLC0415

    table = connection.ops.quote_name(Prediction._meta.db_table)
    with connection.cursor() as cursor:  # the previous run's rows; the history (text "history …") stays
        cursor.execute(f"DELETE FROM {table} WHERE text LIKE 'row %%'")
    _rows_fill(user, rows)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}")
    connections.close_all()
    context = multiprocessing.get_context("fork")
    start, end, written = context.Barrier(claimers + readers + 1), context.Barrier(claimers + 1), context.Value("q", 0)
    stop, pages = context.Event(), context.Value("q", 0)
    processes = [context.Process(target=_claimer, args=(claim, seconds, start, end, written)) for _ in range(claimers)]
    reading = [context.Process(target=_reader, args=(start, stop, pages)) for _ in range(readers)]
    for process in processes + reading:
        process.start()
    start.wait()
    meter, began = CpuMeter().start(), time.monotonic()
    end.wait()
    wall = time.monotonic() - began
    cpu = meter.stop()
    stop.set()
    end.wait()
    for process in processes + reading:
        process.join()
    return {
        "claimers": claimers,
        "claim": claim,
        "rows_per_second": written.value / wall,
        "pages_per_second": pages.value / wall,  # a reader's last round may end after the claimers: near enough
        "cpu": cpu,
        "wall": wall,
    }


def _consumer(url: str, queue: str, expected, start, end, done, last) -> None:
    from kombu import Connection  # noqa: PLC0415

    with Connection(url) as conn:
        simple = conn.SimpleQueue(queue)
        simple.consumer.qos(prefetch_count=4)
        start.wait()
        while True:
            try:
                message = simple.get(block=True, timeout=1)
            except simple.Empty:
                break
            message.ack()
            with done.get_lock():
                done.value += 1
                if done.value == expected:
                    last.value = time.monotonic()  # the run's end (CLOCK_MONOTONIC: the same in every process)
            if done.value >= expected:
                break
        end.wait()
        end.wait()
        simple.close()


def publish_consume(url: str, *, consumers: int, messages: int, ids: int) -> dict:
    from kombu import Connection  # noqa: PLC0415

    queue = f"mlsite-bench-queue-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("fork")
    start, end = context.Barrier(consumers + 1), context.Barrier(consumers + 1)
    done, last = context.Value("q", 0), context.Value("d", 0.0)
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        simple = conn.SimpleQueue(queue)
        processes = [
            context.Process(target=_consumer, args=(url, queue, messages, start, end, done, last))
            for _ in range(consumers)
        ]
        for process in processes:
            process.start()
        body = {"args": [list(range(1_000_000, 1_000_000 + ids))], "kwargs": {}}
        start.wait()
        meter, began = CpuMeter().start(), time.monotonic()
        for _ in range(messages):
            simple.put(body)
        end.wait()
        cpu = meter.stop()
        wall = (last.value or time.monotonic()) - began
        end.wait()
        for process in processes:
            process.join()
        simple.queue.delete()
        simple.close()
    return {"consumers": consumers, "ids": ids, "messages_per_second": done.value / wall, "cpu": cpu, "wall": wall}


def _cpu_line(cpu: dict[str, float], wall: float) -> str:
    cores = os.cpu_count() or 1
    parts = {
        "claimers/clients": cpu["loadgen"] + cpu["other"],
        **{k: cpu[k] for k in ("postgres", "rabbitmq", "redis")},
    }
    return "  ".join(f"{name} {100 * value / (wall * cores):3.0f}%" for name, value in parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claimers", default="1,2,4,8,16,32", help="K: concurrent claiming processes")
    parser.add_argument("--claim", default="16,128", help="rows one claim takes (CLAIM_MAX_ROWS)")
    parser.add_argument("--seconds", type=float, default=10, help="each claim → write run")
    parser.add_argument("--rows", type=int, default=60000, help="rows queued before each claim → write run")
    parser.add_argument("--messages", type=int, default=20000, help="messages per publish → consume run")
    parser.add_argument("--ids", default="1,128", help="row ids in each message (a single text; a batch chunk)")
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the claimers' sessions, e.g. synchronous_commit=off (repeatable)",
    )
    parser.add_argument("--history", type=int, default=0, help="finished rows kept in the table beside the queued ones")
    parser.add_argument(
        "--readers", default="0", help="processes reading the admin overview and list meanwhile (a list: 0,1)"
    )
    parser.add_argument("--no-broker", action="store_true", help="skip publish → consume")
    args = parser.parse_args()
    os.environ.setdefault("CLAIM_WAIT_MS", "0")
    counts = [int(k) for k in args.claimers.split(",")]
    with demo_database() as (user, _):
        from django.conf import settings  # noqa: PLC0415 (after django.setup())
        from django.db import connections  # noqa: PLC0415

        assert settings.DATABASES["default"]["ENGINE"].endswith("postgresql"), "set DATABASE_URL to PostgreSQL"
        if args.pg_setting:  # libpq's startup options: each claimer's session runs with them
            options = connections["default"].settings_dict.setdefault("OPTIONS", {})
            options["options"] = " ".join(f"-c {setting}" for setting in args.pg_setting)
        from django.db import connection  # noqa: PLC0415

        from predictions.models import Prediction  # noqa: PLC0415

        with connection.cursor() as cursor:  # a history left by an earlier run, or test rows
            cursor.execute(f"TRUNCATE {connection.ops.quote_name(Prediction._meta.db_table)} CASCADE")
        if args.history:
            _history_fill(user, args.history)
        cores = os.cpu_count()
        settings_note = f", sessions with {', '.join(args.pg_setting)}" if args.pg_setting else ""
        extra = f", {args.history:,} finished rows in the table" if args.history else ""
        print(f"claim → write, {cores} cores{settings_note}{extra}, rows/s (CPU: % of all cores)")
        for readers in (int(r) for r in args.readers.split(",")):
            for claim in (int(c) for c in args.claim.split(",")):
                settings.CLAIM_BULK_ROWS = claim
                for k in counts:
                    row = claim_write(
                        user, claimers=k, claim=claim, seconds=args.seconds, rows=args.rows, readers=readers
                    )
                    read = f"  readers {readers}  {row['pages_per_second']:5.1f} admin pages/s" if readers else ""
                    print(
                        f"  claim {claim:4d}  K {k:3d}  {row['rows_per_second']:8.0f} rows/s{read}   "
                        f"{_cpu_line(row['cpu'], row['wall'])}",
                        flush=True,
                    )
        url = settings.CELERY_BROKER_URL
    if args.no_broker:
        return
    print("publish → consume, one publisher with confirms, messages/s (CPU: % of all cores)")
    for ids in (int(i) for i in args.ids.split(",")):
        for k in counts:
            row = publish_consume(url, consumers=k, messages=args.messages, ids=ids)
            print(
                f"  ids {ids:4d}  K {k:3d}  {row['messages_per_second']:8.0f} messages/s   {_cpu_line(row['cpu'], row['wall'])}",
                flush=True,
            )


if __name__ == "__main__":
    main()
