"""`make soak`: the real stack under mixed load for minutes while the worker's child is killed on a schedule.

Starts the stack as `make bench` does (a fresh PostgreSQL database, RabbitMQ, Redis; a queue of its
own), then for --minutes runs a few client threads (single POSTs with ?wait, batches polled to the end,
repeated texts served from the cache, GETs) while every --kill-every seconds the Celery worker's pool
child is sent SIGKILL (the parent forks a new one; the killed task's message is redelivered). Then it
waits for the queue to drain (the sweeper runs every few seconds here) and checks, from the database:

- lost: every prediction id a client got back exists and is finished;
- every row is succeeded, or failed with a reason;
- duplicates: no row finished twice (a trigger in the soak's own database records every transition
  to succeeded/failed), none started more than MAX_ATTEMPTS times, no history rows (nothing re-ran);
- memory: the RSS of web, worker and beat, sampled all along, did not grow from the first third of
  the run to the last third beyond a tolerance.

It prints the figures and exits 1 on any violation (HTTP 5xx and connection errors count too).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import psycopg
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import Stack, fresh_database_url  # noqa: E402

WORDS = (  # noqa: SIM905 - a sentence reads better than a list of 38 strings
    "a gorgeous witty moving film with a dull plot and wonderful acting that I hated loved and will never "
    "forget the music was awful but the ending made my day thank you so much this is boring brilliant"
).split()
MB = 1024 * 1024

FINISH_TRIGGER = """
CREATE TABLE soak_finish (prediction_id bigint NOT NULL, status varchar(16) NOT NULL, at timestamptz DEFAULT now());
CREATE FUNCTION soak_finish_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status IN ('succeeded', 'failed') AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status) THEN
    INSERT INTO soak_finish (prediction_id, status) VALUES (NEW.id, NEW.status);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER soak_finish AFTER INSERT OR UPDATE OF status ON predictions_prediction
  FOR EACH ROW EXECUTE FUNCTION soak_finish_record();
"""


class Client:
    """One keep-alive HTTP connection that reconnects after an error."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Token {self.token}", "Content-Type": "application/json"}
        try:
            self.connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = self.connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        except Exception:
            self.connection.close()
            self.connection = None
            raise


class Load:
    """What the clients did and every id they were given back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.prediction_ids: set[int] = set()
        self.batch_ids: set[int] = set()

    def record(self, kind: str, status: int | None, *, predictions=(), batch: int | None = None) -> None:
        with self.lock:
            self.requests[kind] += 1
            if status is None or status >= 500:
                self.errors[f"{kind} {status or 'connection'}"] += 1
            elif status >= 400:
                self.errors[f"{kind} {status}"] += 1
            self.prediction_ids.update(predictions)
            if batch is not None:
                self.batch_ids.add(batch)


def client_loop(stack: Stack, load: Load, *, number: int, stop_at: float, seed: int) -> None:  # noqa: C901 (the traffic mix reads as one loop)
    """Mixed traffic until `stop_at`: 40% single POST ?wait=10, 15% batch polled to the end, 20% a
    repeated text (cache hits), 25% GETs of a prediction, a batch or the list."""
    rng = random.Random(seed * 1000 + number)
    client = Client(stack.port, stack.token)
    repeated = [f"{' '.join(random.Random(i).sample(WORDS, 6))} (repeated {i})" for i in range(10)]
    counter = 0

    def text() -> str:
        nonlocal counter
        counter += 1
        return f"{' '.join(rng.sample(WORDS, rng.randint(3, 14)))} ({seed}-{number}-{counter})"

    def call(kind: str, method: str, path: str, body=None) -> tuple[int | None, dict]:
        try:
            status, reply = client.call(method, path, body)
        except Exception:
            load.record(kind, None)
            return None, {}
        return status, reply

    while time.monotonic() < stop_at:
        pick = rng.random()
        if pick < 0.40:
            status, body = call("post", "POST", "/api/v1/predictions/?wait=10", {"text": text()})
            if status is not None:
                load.record("post", status, predictions=[body["id"]] if "id" in body else [])
        elif pick < 0.55:
            texts = [text() for _ in range(rng.randint(5, 20))]
            status, body = call("batch", "POST", "/api/v1/batches/", {"texts": texts})
            if status is None:
                continue
            load.record("batch", status, predictions=[r["id"] for r in body.get("results", [])], batch=body.get("id"))
            deadline = time.monotonic() + 60
            while status == 202 and time.monotonic() < min(deadline, stop_at + 30):
                time.sleep(0.2)
                poll, detail = call("get batch", "GET", f"/api/v1/batches/{body['id']}/")
                if poll is not None:
                    load.record("get batch", poll)
                if poll != 200 or detail.get("finished"):
                    break
        elif pick < 0.75:
            status, body = call("repeat", "POST", "/api/v1/predictions/?wait=10", {"text": rng.choice(repeated)})
            if status is not None:
                load.record("repeat", status, predictions=[body["id"]] if "id" in body else [])
        else:
            with load.lock:
                known = rng.choice(sorted(load.prediction_ids)) if load.prediction_ids else None
            path = f"/api/v1/predictions/{known}/" if known and pick < 0.95 else "/api/v1/predictions/?page=1"
            status, _ = call("get", "GET", path)
            if status is not None:
                load.record("get", status)


def stack_processes(stack: Stack) -> dict[str, list[psutil.Process]]:
    """web (granian main process and workers), worker (celery's main process), worker child (its pool), beat."""
    roles: dict[str, list[psutil.Process]] = {"web": [], "worker": [], "worker child": [], "beat": []}
    try:
        top = psutil.Process(stack.process.pid).children()
    except psutil.NoSuchProcess:
        return roles
    for process in top:
        try:
            line = " ".join(process.cmdline())
            children = process.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        if "granian" in line:
            roles["web"] += [process, *children]
        elif " worker" in line:
            roles["worker"].append(process)
            roles["worker child"] += children
        elif " beat" in line:
            roles["beat"] += [process, *children]
    return roles


def rss_sample(stack: Stack) -> dict[str, float]:
    sample = {}
    for role, processes in stack_processes(stack).items():
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        sample[role] = total / MB
    return sample


def sampler(stack: Stack, samples: list[dict[str, float]], *, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        samples.append(rss_sample(stack))


def killer(stack: Stack, faults: list[str], *, every: float, stop: threading.Event) -> None:
    """SIGKILL the worker's pool child every `every` seconds (the realistic 'worker killed' fault)."""
    while not stop.wait(every):
        children = stack_processes(stack)["worker child"]
        if not children:
            faults.append("no worker child to kill (still starting)")
            continue
        victim = random.choice(children)
        try:
            os.kill(victim.pid, signal.SIGKILL)
            faults.append(f"SIGKILL worker child pid {victim.pid}")
        except ProcessLookupError:
            pass


def database_checks(query, load: Load, max_attempts: int) -> dict:
    """The verdict on every row, from `query(sql) -> rows` on the soak's database (the trigger installed)."""
    rows = {
        pk: (status, error, attempts, cached)
        for pk, status, error, attempts, cached in query(
            "SELECT id, status, error, attempts, cached FROM predictions_prediction"
        )
    }
    finishes = dict(query("SELECT prediction_id, count(*) FROM soak_finish GROUP BY prediction_id"))
    history = query("SELECT count(*) FROM predictions_predictionresult")[0][0]
    statuses = Counter(status for status, *_ in rows.values())
    return {
        "rows": len(rows),
        "statuses": dict(statuses),
        "cached": sum(1 for *_, cached in rows.values() if cached),
        "lost": sorted(pk for pk in load.prediction_ids if pk not in rows),
        "unfinished": sorted(pk for pk, (status, *_) in rows.items() if status not in ("succeeded", "failed")),
        "failed_without_reason": sorted(pk for pk, (s, error, *_) in rows.items() if s == "failed" and not error),
        "failed_reasons": Counter(error.split(":")[0] for s, error, *_ in rows.values() if s == "failed"),
        "finished_twice": sorted(pk for pk, n in finishes.items() if n > 1),
        "finished_never_recorded": sorted(
            pk for pk, (s, *_) in rows.items() if s in ("succeeded", "failed") and pk not in finishes
        ),
        "over_attempts": sorted(pk for pk, (_, _, attempts, _) in rows.items() if attempts > max_attempts),
        "started_more_than_once": sum(1 for _, _, attempts, _ in rows.values() if attempts > 1),
        "history_rows": history,
        "unknown_to_clients": len(set(rows) - load.prediction_ids),
    }


def drain(database_url: str, *, timeout: float) -> float:
    """Wait until no row is queued or running; returns the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        with psycopg.connect(database_url) as conn:
            waiting = conn.execute(
                "SELECT count(*) FROM predictions_prediction WHERE status IN ('queued', 'running')"
            ).fetchone()[0]
        if waiting == 0:
            break
        time.sleep(2)
    return time.monotonic() - began


def memory_verdict(
    samples: list[dict[str, float]], *, tolerance: float, slack_mb: float
) -> tuple[list[str], list[str]]:
    """Lines per role (start/end, first-third and last-third means) and the roles whose memory grew too much."""
    lines, grew = [], []
    third = max(1, len(samples) // 3)
    for role in ("web", "worker", "worker child", "beat"):
        series = [s[role] for s in samples if s.get(role)]
        if len(series) < 3:
            lines.append(f"  {role:<12} too few samples ({len(series)})")
            continue
        first, last = statistics.mean(series[:third]), statistics.mean(series[-third:])
        limit = first * (1 + tolerance) + slack_mb
        ok = last <= limit
        lines.append(
            f"  {role:<12} start {series[0]:7.1f} MB  end {series[-1]:7.1f} MB  "
            f"first third {first:7.1f}  last third {last:7.1f}  ({(last - first) / first:+.1%}, limit {limit:.1f}) "
            + ("ok" if ok else "GREW")
        )
        if not ok:
            grew.append(role)
    return lines, grew


def queue_delete(broker_url: str, queue: str) -> None:
    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception as exc:  # leaving an empty queue behind is not worth failing the soak
        print(f"(could not delete queue {queue}: {exc})")


def progress(began: float, load: Load, faults: list[str]) -> None:
    kills = sum(1 for fault in faults if fault.startswith("SIGKILL"))
    print(
        f"  t={time.monotonic() - began:4.0f}s requests {sum(load.requests.values())} "
        f"predictions {len(load.prediction_ids)} faults {kills}",
        flush=True,
    )


def violations_found(checks: dict, load: Load, *, grew: list[str], injected: bool) -> list[str]:
    """What failed the soak: rows lost, unfinished, finished twice or re-run, HTTP errors, memory growth,
    or no fault injected when kills were asked for."""
    violations = []
    checked = (
        "lost",
        "unfinished",
        "failed_without_reason",
        "finished_twice",
        "finished_never_recorded",
        "over_attempts",
    )
    for name in checked:
        if checks[name]:
            violations.append(f"{name}: {len(checks[name])} (ids {checks[name][:10]})")
    if checks["history_rows"]:
        violations.append(f"history rows: {checks['history_rows']} (nothing should have been re-run)")
    if load.errors:
        violations.append(f"HTTP errors: {dict(load.errors)}")
    if grew:
        violations.append(f"memory grew: {', '.join(grew)}")
    if not injected:
        violations.append("no fault was injected")
    return violations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10, help="how long the load runs (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--kill-every", type=float, default=20, help="seconds between worker-child kills (0: none)")
    parser.add_argument("--sample-every", type=float, default=3, help="seconds between RSS samples")
    parser.add_argument("--drain-timeout", type=float, default=300, help="seconds to wait for the queue to empty")
    parser.add_argument("--rss-tolerance", type=float, default=0.25, help="allowed growth, last third vs first")
    parser.add_argument("--rss-slack-mb", type=float, default=32, help="allowed growth in MB on top of the fraction")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1:
        parser.error("--minutes must be positive and --clients at least 1")

    max_attempts = 3
    broker_url = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    database_url, drop = fresh_database_url(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"))
    queue = f"soak-{os.getpid()}"
    env = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13"),
        "CELERY_QUEUE": queue,
        "LOG_LEVEL": "WARNING",
        "MAX_ATTEMPTS": str(max_attempts),
        "SWEEP_INTERVAL": "5",  # the sweeper finds lost work within seconds, not minutes
        "SWEEP_QUEUED_AFTER": "15",
        "SWEEP_RUNNING_AFTER": "30",
        "THROTTLE_SUBMIT": "",  # one user is the whole load here: rate limits off
        "THROTTLE_READ": "",
    }
    load, faults, samples = Load(), [], []
    with tempfile.TemporaryDirectory(prefix="mlsite-soak-") as tmp:
        stack = Stack(Path(tmp), web_workers=2, **env)
        try:
            stack.manage("migrate", "--noinput")

            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(FINISH_TRIGGER)
            stack.start()
            print(
                f"soak: stack ready on :{stack.port} (PostgreSQL + RabbitMQ + Redis, queue {queue}); "
                f"{args.minutes:g} min, {args.clients} clients, worker child killed every {args.kill_every:g} s",
                flush=True,
            )
            samples.append(rss_sample(stack))
            stop = threading.Event()
            helpers = [
                threading.Thread(
                    target=sampler, args=(stack, samples), kwargs={"every": args.sample_every, "stop": stop}
                )
            ]
            if args.kill_every > 0:
                helpers.append(
                    threading.Thread(
                        target=killer, args=(stack, faults), kwargs={"every": args.kill_every, "stop": stop}
                    )
                )
            began = time.monotonic()
            stop_at = began + args.minutes * 60
            clients = [
                threading.Thread(
                    target=client_loop, args=(stack, load), kwargs={"number": n, "stop_at": stop_at, "seed": args.seed}
                )
                for n in range(args.clients)
            ]
            for thread in helpers + clients:
                thread.start()
            for thread in clients:
                while thread.is_alive():
                    thread.join(timeout=30)
                    if thread.is_alive() or thread is clients[-1]:
                        progress(began, load, faults)
            stop.set()
            for thread in helpers:
                thread.join()
            drained = drain(database_url, timeout=args.drain_timeout)
            samples.append(rss_sample(stack))
            with psycopg.connect(database_url) as conn:
                checks = database_checks(lambda sql: conn.execute(sql).fetchall(), load, max_attempts)
        finally:
            stack.stop()
            for name in (queue, f"{queue}.sentiment", f"{queue}.emotions"):  # its own and its models' queues
                queue_delete(broker_url, name)
            drop()

    kills = [f for f in faults if f.startswith("SIGKILL")]
    memory_lines, grew = memory_verdict(samples, tolerance=args.rss_tolerance, slack_mb=args.rss_slack_mb)
    violations = violations_found(checks, load, grew=grew, injected=bool(kills) or args.kill_every <= 0)

    print()
    print(
        f"requests: {sum(load.requests.values())} ({', '.join(f'{k} {v}' for k, v in sorted(load.requests.items()))})"
    )
    print(f"HTTP errors: {sum(load.errors.values())} {dict(load.errors) if load.errors else ''}")
    print(
        f"predictions: {len(load.prediction_ids)} ids returned to the clients ({len(load.batch_ids)} batches, "
        f"{load.requests['post'] + load.requests['repeat']} single posts); {checks['rows']} rows in the database, "
        f"{checks['cached']} answered from the cache; statuses {checks['statuses']}"
    )
    if checks["failed_reasons"]:
        print(f"failed, by reason: {dict(checks['failed_reasons'])}")
    print(f"faults injected: {len(kills)} SIGKILLs of the worker's pool child")
    print(f"drained in {drained:.0f} s after the load stopped")
    print(
        f"lost = {len(checks['lost'])}, unfinished = {len(checks['unfinished'])}, "
        f"failed without a reason = {len(checks['failed_without_reason'])}"
    )
    print(
        f"duplicates = {len(checks['finished_twice'])} (rows finished twice), "
        f"over MAX_ATTEMPTS = {len(checks['over_attempts'])}, history rows = {checks['history_rows']}; "
        f"{checks['started_more_than_once']} row(s) started again after a kill"
    )
    if checks["finished_never_recorded"]:
        print(f"finished rows the trigger never saw finish: {len(checks['finished_never_recorded'])}")
    print(f"rows no client was told about (its request failed after the row was saved): {checks['unknown_to_clients']}")
    print(f"RSS ({len(samples)} samples every {args.sample_every:g} s):")
    print("\n".join(memory_lines))
    if violations:
        print("\nSOAK FAILED:\n  " + "\n  ".join(violations))
        return 1
    print("\nSOAK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
