"""`make bench`: the service under load against the raw model, in one run, on this machine.

Starts the stack (PostgreSQL + RabbitMQ + Redis by default, as `make run` would with the three
variables set), loads it from this separate process over loopback, and runs the same bundled model
in-process on the same texts (RAW: batched, sorted by length), measured before the first workload and
after each one. Every line reports its ratio to the RAW measured around it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu import PARTS, CpuMeter, shares  # noqa: E402
from bench.stack import Stack, real_services_env  # noqa: E402
from predictions.registry import BUNDLED_MODELS_DIR  # noqa: E402
from textclf.serving.loading import classifier_load  # noqa: E402


def sst2_texts(datasets_dir: Path) -> list[str]:
    lines = (datasets_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t", 1)[1] for line in lines if "\t" in line]


RUN_TAG = f"{os.getpid() % 1000:03d}"
_TAGS: dict[str, int] = {}  # each tag's number in this run, in the order first asked for
MARK_LETTERS = 8  # 26 ** 8 > 1000 runs × 100 tags × 1,000,000 texts


def unique_texts(base: list[str], n: int, tag: str) -> list[str]:
    """n texts from the dev set, each made unique (per run, too) so no request is answered from the cache.

    The mark is a number (this run, the tag, the text's index) written as MARK_LETTERS single letters
    between brackets: every letter is one token, so every workload's texts are as long as any
    other's (a mark that spelled the tag out made W4's single texts up to 19 % longer than W2's)."""
    number = _TAGS.setdefault(tag, len(_TAGS))
    if number >= 100 or n > 1_000_000:
        raise ValueError("at most 100 tags a run and 1,000,000 texts a tag")
    first = (int(RUN_TAG) * 100 + number) * 1_000_000
    return [f"{base[i % len(base)]} ({_letters(first + i)})" for i in range(n)]


def _letters(value: int) -> str:
    """`value` in base 26, MARK_LETTERS letters a–z, separated by spaces (one token each)."""
    digits = []
    for _ in range(MARK_LETTERS):
        value, digit = divmod(value, 26)
        digits.append(chr(ord("a") + digit))
    return " ".join(reversed(digits))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Client:
    """One keep-alive HTTP/1.1 connection, as one API client would hold.

    A minimal client over a socket: on these 2 cores the load generator takes its CPU from the
    service, and http.client (headers parsed by the email package) cost about three times as much
    per request. Every answer is still read whole and its JSON parsed."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Token {token}\r\nContent-Type: application/json\r\n"
        self.sock: socket.socket | None = None
        self.buffer = b""

    def call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        payload = json.dumps(body).encode() if body is not None else b""
        request = f"{method} {path} HTTP/1.1\r\n{self.head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        try:
            self.sock.sendall(request)
            status, headers, content = self._response()
        except Exception:
            self.close()
            raise
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, json.loads(content or b"{}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            self._fill()
        line, self.buffer = self.buffer[:end], self.buffer[end + len(marker) :]
        return line

    def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _fill(self) -> None:
        piece = self.sock.recv(65536)
        if not piece:
            raise ConnectionError("the server closed the connection")
        self.buffer += piece

    def _response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        lines = self._read_until(b"\r\n\r\n").split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            return status, headers, self._read_exactly(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            chunks = []
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                chunks.append(self._read_exactly(size))
                self._read_exactly(2)
            self._read_until(b"\r\n")  # no trailers are sent
            return status, headers, b"".join(chunks)
        raise ConnectionError(f"an answer with neither Content-Length nor chunked encoding: {lines[0]!r}")


def closed_loop(stack: Stack, *, clients: int, seconds: float, texts: list[str], path: str, ok: set[int]) -> dict:
    """`clients` threads, each sending its next text as soon as the previous answer came back."""
    latencies: list[float] = []
    stages: list[tuple[float, ...]] = []
    errors = 0
    error_kinds: dict[str, int] = {}  # "status: what the answer said", so a report can say what failed
    counter = iter(range(10**9))
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run() -> None:
        nonlocal errors
        client = Client(stack.port, stack.token)
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter)
            started, sent = time.perf_counter(), time.time()
            try:
                status, body = client.call("POST", path, {"text": texts[i % len(texts)]})
                good = status in ok and body.get("status") == "succeeded"
                kind = f"{status} {body.get('status')}: {body.get('error') or body.get('detail') or ''}"[:100]
            except Exception as exc:
                good, kind = False, f"{type(exc).__name__}: {exc}"[:100]
                client = Client(stack.port, stack.token)
            received = time.time()
            elapsed = time.perf_counter() - started
            with lock:
                if good:
                    latencies.append(elapsed)
                    if not body.get("cached"):
                        stages.append(stage_times(body, sent, received))
                else:
                    errors += 1
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1

    meter = CpuMeter().start()
    began = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    return {
        "cpu_seconds": meter.stop(),
        "clients": clients,
        "requests": len(latencies) + errors,
        "per_second": len(latencies) / wall,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "errors": errors,
        "error_kinds": dict(sorted(error_kinds.items(), key=lambda item: -item[1])[:5]),
        "cached": len(latencies) - len(stages),  # answers from the cache (W3's are; W1's and W4's must not be)
        **(
            {"stages_p50_ms": {name: percentile([s[k] for s in stages], 0.50) for k, name in enumerate(STAGES)}}
            if stages
            else {}
        ),
    }


# A run request's time, by the timestamps its answer carries (the load generator and the service
# share this machine's clock): sent → created_at (web: parsing, auth, cache lookup), → started_at
# (the INSERT, the wake-up through RabbitMQ and Celery, until a worker claims the row), → finished_at
# (the claim's statement, tokenizing and the forward pass), → received (cache fill, result UPDATE,
# notification, the waiting request's answer).
STAGES = ("web until saved", "queued until claimed", "claim + forward pass", "written until received")


def stage_times(body: dict, sent: float, received: float) -> tuple[float, ...]:
    moments = [
        sent,
        *(dt.datetime.fromisoformat(body[k]).timestamp() for k in ("created_at", "started_at", "finished_at")),
        received,
    ]
    return tuple((b - a) * 1000 for a, b in itertools.pairwise(moments))


def batches(stack: Stack, *, clients: int, per_client: int, size: int, texts: list[str]) -> dict:
    """Each client posts batches of `size` texts and polls each to completion (GET ?wait=30)."""
    done = 0
    errors = 0
    lock = threading.Lock()

    def run(c: int) -> None:
        nonlocal done, errors
        client = Client(stack.port, stack.token)
        for b in range(per_client):
            start = (c * per_client + b) * size
            status, body = client.call("POST", "/api/v1/batches/", {"texts": texts[start : start + size]})
            if status != 202:
                with lock:
                    errors += 1
                continue
            while True:  # long polls: each GET returns as soon as the batch finishes, or after 30 s
                status, detail = client.call("GET", f"/api/v1/batches/{body['id']}/?wait=30")
                if detail.get("finished"):
                    break
            with lock:
                done += detail["counts"]["succeeded"]
                errors += detail["counts"]["failed"]

    meter = CpuMeter().start()
    began = time.monotonic()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    return {
        "cpu_seconds": meter.stop(),
        "clients": clients,
        "batch_size": size,
        "texts": done,
        "per_second": done / wall,
        "errors": errors,
    }


def rows_finished(stack: Stack, *, since: dt.datetime, until: dt.datetime) -> int:
    """Bulk and background rows (lanes 1 and 2) that finished between the two moments, read from the
    stack's database (the bench reads it directly: no endpoint counts across batches and re-runs)."""
    sql = "SELECT count(*) FROM predictions_prediction WHERE lane > 0 AND finished_at >= %s AND finished_at < %s"
    return int(_database_scalar(stack, sql, (since, until)))


def rows_unfinished(stack: Stack) -> int:
    sql = "SELECT count(*) FROM predictions_prediction WHERE lane > 0 AND status IN ('queued', 'running')"
    return int(_database_scalar(stack, sql, ()))


def _database_scalar(stack: Stack, sql: str, params: tuple):
    if url := stack.env.get("DATABASE_URL"):
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchone()[0]
    with sqlite3.connect(stack.var_dir / "db.sqlite3") as conn:  # the embedded default: naive UTC text
        values = tuple(v.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ") for v in params)
        return conn.execute(sql.replace("%s", "?"), values).fetchone()[0]


def bulk_queue(stack: Stack, texts: list[str], *, size: int) -> list[int]:
    """Queue `texts` as API batches of `size`, as fast as they are answered; the batches' ids."""
    client = Client(stack.port, stack.token)
    ids = []
    for start in range(0, len(texts), size):
        status, body = client.call("POST", "/api/v1/batches/", {"texts": texts[start : start + size]})
        while status == 503:  # MAX_QUEUED in flight (the backlog, and single texts): retry, as a client would
            time.sleep(1)
            status, body = client.call("POST", "/api/v1/batches/", {"texts": texts[start : start + size]})
        assert status == 202, (status, body)
        ids.append(body["id"])
    client.close()
    return ids


def mixed(stack: Stack, *, clients: int, seconds: float, texts: list[str], during, submit_inside: bool) -> dict:
    """W4: `clients` interactive clients (single texts, ?wait=30) for `seconds` while bulk or background
    work is queued; `during()` queues that work. The window starts once it has returned: the whole
    backlog is queued and draining. With `submit_inside`, the window starts a second after it begins,
    so the submission's own CPU (the batches' POSTs, the re-run's archive and requeue) falls in the
    window too. Bulk texts/s counts the bulk and background rows finished in the window."""
    took = {}

    def submit() -> None:
        began = time.monotonic()
        try:
            during()
        finally:
            took["seconds"] = round(time.monotonic() - began, 1)

    queueing = threading.Thread(target=submit)
    queueing.start()
    if submit_inside:
        time.sleep(1)  # the backlog is there before the first interactive text
    else:
        queueing.join()
    since = dt.datetime.now(dt.UTC)
    row = closed_loop(
        stack, clients=clients, seconds=seconds, texts=texts, path="/api/v1/predictions/?wait=30", ok={200}
    )
    until = dt.datetime.now(dt.UTC)
    queueing.join()
    row["bulk_per_second"] = rows_finished(stack, since=since, until=until) / (until - since).total_seconds()
    row["submit_inside"], row["submit_seconds"] = submit_inside, took["seconds"]
    row["window"] = [since.isoformat(), until.isoformat()]  # to match the stack log's lines (--stack-log)
    began = time.monotonic()
    while rows_unfinished(stack):  # the backlog drains before the next workload
        time.sleep(1)
    row["drain_seconds"] = round(time.monotonic() - began, 1)
    return row


def fair_share(stack: Stack, *, size: int, texts: list[str]) -> dict:
    """W5: two users post a batch of `size` texts at the same moment and wait for it; how far apart they finish."""
    second_token = stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
        "u, _ = User.objects.get_or_create(username='bench-second'); print(Token.objects.get_or_create(user=u)[0].key)",
    ).splitlines()[-1]  # the shell may print log lines first
    start = threading.Barrier(2)
    took: dict[str, float] = {}

    def run(name: str, token: str, batch: list[str]) -> None:
        client = Client(stack.port, token)
        start.wait()
        began = time.monotonic()
        status, body = client.call("POST", "/api/v1/batches/", {"texts": batch})
        assert status == 202, (status, body)
        while not client.call("GET", f"/api/v1/batches/{body['id']}/?wait=30")[1].get("finished"):
            pass
        took[name] = time.monotonic() - began

    threads = [
        threading.Thread(target=run, args=("first", stack.token, texts[:size])),
        threading.Thread(target=run, args=("second", second_token, texts[size : 2 * size])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, second = took["first"], took["second"]
    return {"size": size, "first_s": first, "second_s": second, "apart": abs(first - second) / max(first, second)}


class Raw:
    """The bundled model in this process on the same texts: batched, sorted by length (RAW).

    Measured when the stack is idle, before the first workload and again after each one: a
    workload's ratio is to the mean of the measurements just before and just after it, so the
    machine's drift over the run (RAW moves by a quarter from minute to minute on a shared host)
    falls on both sides of the ratio alike. Each measurement is the best of `repeats` passes."""

    def __init__(self, texts: list[str], *, int8: bool, packed: bool, batch_size: int, repeats: int = 2) -> None:
        import torch  # noqa: PLC0415 (torch loads lazily: only RAW needs it)

        torch.set_num_threads(os.cpu_count() or 1)
        self.classifier = classifier_load(
            "sentiment", "bundled:sentiment", bundled_dir=BUNDLED_MODELS_DIR, device="cpu", int8=int8, packed=packed
        )
        self.classifier.predict(texts[:64])  # warm-up
        self.texts, self.batch_size, self.repeats = texts, batch_size, repeats
        self.measurements: list[float] = []

    def measure(self) -> float:
        best = 0.0
        for _ in range(self.repeats):
            began = time.perf_counter()
            self.classifier.predict(self.texts, batch_size=self.batch_size)
            best = max(best, len(self.texts) / (time.perf_counter() - began))
        self.measurements.append(best)
        print(f"RAW: {best:.1f} texts/s", flush=True)
        return best

    def around(self, row: dict) -> dict:
        """Measure again after the workload and record the RAW its ratio is to."""
        before = self.measurements[-1]
        row["raw_per_second"] = (before + self.measure()) / 2
        return row

    def summary(self) -> dict:
        values = self.measurements
        return {
            "texts": len(self.texts),
            "per_second": sum(values) / len(values),
            "measurements": [round(v, 1) for v in values],
            "batch_size": self.batch_size,
        }


def stack_start(
    var_dir: Path,
    *,
    embedded: bool,
    int8: bool,
    packed: bool = True,
    web_workers: int = 2,
    web_threads: int = 16,
    log_level: str = "WARNING",
    shadow_rate: float = 1.0,
):
    env = {
        "INFERENCE_INT8": "1" if int8 else "0",
        "INFERENCE_PACKED": "1" if packed else "0",
        "LOG_LEVEL": log_level,
        "CLAIM_LOOP_SECONDS": "10",
        "SHADOW_RATE": str(shadow_rate),  # only W6 has a shadowed version
    }
    env.update(THROTTLE_SUBMIT="", THROTTLE_READ="")  # one user is the whole load here: rate limits off
    cleanup = lambda: None  # noqa: E731
    if not embedded:
        services, cleanup = real_services_env(queue_prefix="bench", redis_db=13)
        env.update(services)
    stack = Stack(var_dir, web_workers=web_workers, web_threads=web_threads, **env)
    if "REDIS_URL" in env:  # start from an empty cache: only W3 should be served from it
        redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    stack.start()
    return stack, cleanup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="duration of each closed-loop workload")
    parser.add_argument("--clients", default="1,4,16", help="client counts for W1")
    parser.add_argument("--batches", type=int, default=6, help="batches per W2 client (2 clients)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workloads", default="w1,w2,w3,w4,w5,w6", help="which workloads to run (RAW always runs)")
    parser.add_argument("--w2-clients", type=int, default=2, help="clients posting batches at once in W2")
    parser.add_argument("--w4-texts", type=int, default=10000, help="bulk texts queued (as batches of 1,000) in W4")
    parser.add_argument(
        "--w4-submit-inside",
        action="store_true",
        help="start W4's window a second after the backlog's submission starts, not once it is queued",
    )
    parser.add_argument("--w5-size", type=int, default=1000, help="each of W5's two users' batch size")
    parser.add_argument("--w6-clients", type=int, default=4, help="single-text clients in W6 (shadow traffic)")
    parser.add_argument("--w6-rate", type=float, default=1.0, help="SHADOW_RATE in W6")
    parser.add_argument("--web-workers", type=int, default=2, help="web server (granian) processes (as make run: 2)")
    parser.add_argument("--web-threads", type=int, default=16, help="threads per web server process (as make run: 16)")
    parser.add_argument("--int8", action="store_true", help="serve and compare the int8 model")
    parser.add_argument(
        "--padded", action="store_true", help="pad every forward pass, service and RAW alike (INFERENCE_PACKED=0)"
    )
    parser.add_argument(
        "--stack-log",
        type=Path,
        help="keep the stack's log here, at LOG_LEVEL INFO: a line per request and per forward pass "
        "(its size, seconds and the worker process's CPU seconds)",
    )
    parser.add_argument(
        "--raw-batch-size", type=int, default=16, help="RAW's batch size (the service's PASS_MAX_TEXTS)"
    )
    parser.add_argument(
        "--embedded", action="store_true", help="run on the embedded default instead of the real services"
    )
    parser.add_argument(
        "--datasets-dir", type=Path, default=Path(os.environ.get("DATASETS_DIR", ROOT.parent / "shared" / "datasets"))
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench.png")
    args = parser.parse_args(argv)

    base = sst2_texts(args.datasets_dir)
    client_counts = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="mlsite-bench-") as tmp:
        stack, cleanup = stack_start(
            Path(tmp),
            embedded=args.embedded,
            int8=args.int8,
            packed=not args.padded,
            log_level="INFO" if args.stack_log else "WARNING",
            web_workers=args.web_workers,
            web_threads=args.web_threads,
            shadow_rate=args.w6_rate,
        )
        try:
            results = run_workloads(stack, base, client_counts, args)
        finally:
            stack.stop()
            cleanup()
            if args.stack_log:
                shutil.copyfile(Path(tmp) / "stack.log", args.stack_log)
    report(results, args)


def run_workloads(stack: Stack, base: list[str], client_counts: list[int], args) -> dict:
    print(
        f"stack ready on :{stack.port} ({'embedded default' if args.embedded else 'PostgreSQL + RabbitMQ + Redis'})",
        flush=True,
    )
    # Warm the stack up first: RAW must not be measured while the worker processes still load their models.
    closed_loop(
        stack,
        clients=4,
        seconds=3,
        texts=unique_texts(base, 2000, "warm-"),
        path="/api/v1/predictions/?wait=30",
        ok={200},
    )
    raw = Raw(
        unique_texts(base, len(base), "r"), int8=args.int8, packed=not args.padded, batch_size=args.raw_batch_size
    )
    raw.measure()
    results: dict = {}
    workloads = set(args.workloads.split(","))
    w1 = []
    for clients in client_counts if "w1" in workloads else []:
        texts = unique_texts(base, 20000, f"w1c{clients}-")
        closed_loop(
            stack,
            clients=clients,
            seconds=2,
            texts=unique_texts(base, 2000, f"warm{clients}-"),
            path="/api/v1/predictions/?wait=30",
            ok={200},
        )
        row = closed_loop(
            stack, clients=clients, seconds=args.seconds, texts=texts, path="/api/v1/predictions/?wait=30", ok={200}
        )
        row["tail"] = settle()
        print(f"W1 {clients:>2} clients: {row['per_second']:.1f} texts/s p50 {row['p50_ms']:.0f} ms", flush=True)
        w1.append(raw.around(row))
    results["w1"] = w1
    if "w2" in workloads:
        total = args.w2_clients * args.batches * args.batch_size
        results["w2"] = batches(
            stack,
            clients=args.w2_clients,
            per_client=args.batches,
            size=args.batch_size,
            texts=unique_texts(base, total, "w2-"),
        )
        results["w2"]["tail"] = settle()
        print(f"W2: {results['w2']['per_second']:.1f} texts/s", flush=True)
        raw.around(results["w2"])
    if "w3" in workloads:
        hot = unique_texts(base, 50, "hot-")
        closed_loop(stack, clients=4, seconds=3, texts=hot, path="/api/v1/predictions/?wait=30", ok={200})
        results["w3"] = closed_loop(
            stack, clients=16, seconds=args.seconds, texts=hot, path="/api/v1/predictions/", ok={200}
        )
        results["w3"]["tail"] = settle()
        print(f"W3: {results['w3']['per_second']:.1f} requests/s", flush=True)
        raw.around(results["w3"])
    if "w4" in workloads:
        texts = unique_texts(base, args.w4_texts, "w4-")
        batch_size = 1000  # API_BATCH_MAX_TEXTS's default
        moments = {}

        def queue_bulk() -> None:
            moments["since"] = dt.datetime.now(dt.UTC)
            bulk_queue(stack, texts, size=batch_size)
            moments["until"] = dt.datetime.now(dt.UTC)

        def queue_reprocess() -> None:  # the same rows again, as a re-run after a model upgrade would
            stack.manage(
                "reprocess",
                "--model",
                "sentiment",
                "--since",
                moments["since"].isoformat(),
                "--until",
                moments["until"].isoformat(),
            )

        w4 = {}
        for name, during in (("batches", queue_bulk), ("reprocess", queue_reprocess)):
            interactive = unique_texts(base, 20000, f"w4i-{name}-")  # each variant its own: no cache hits
            w4[name] = mixed(
                stack,
                clients=16,
                seconds=args.seconds,
                texts=interactive,
                during=during,
                submit_inside=args.w4_submit_inside,
            )
            print(
                f"W4 with {name}: interactive p95 {w4[name]['p95_ms']:.0f} ms p99 {w4[name]['p99_ms']:.0f} ms, "
                f"bulk {w4[name]['bulk_per_second']:.1f} texts/s; submitted in {w4[name]['submit_seconds']} s"
                + (" (inside the window)" if args.w4_submit_inside else " (before the window)")
                + (f"; errors by kind: {w4[name]['error_kinds']}" if w4[name]["errors"] else ""),
                flush=True,
            )
            raw.around(w4[name])
        results["w4"] = w4
    if "w6" in workloads:
        results["w6"] = shadow_cost(stack, base, args)
    if "w5" in workloads:
        results["w5"] = fair_share(stack, size=args.w5_size, texts=unique_texts(base, 2 * args.w5_size, "w5-"))
        print(f"W5: two batches finished {results['w5']['apart']:.0%} apart", flush=True)
    results["raw"] = raw.summary()
    return results


def _shadow_answered(stack: Stack) -> int:
    out = stack.manage(
        "shell",
        "-c",
        "from predictions.models import ShadowAnswer; print(ShadowAnswer.objects.filter(status='succeeded').count())",
    )
    return int(out.strip().splitlines()[-1])


def shadow_cost(stack: Stack, base: list[str], args) -> dict:
    """W6: single texts (W1 at --w6-clients) with a version shadowed at SHADOW_RATE (--w6-rate) and without,
    alternating, two rounds. The shadowed version is the bundled model registered again: a candidate's
    cost. Counts the shadow answers given while the clients ran, and after."""
    rows: dict[str, list[dict]] = {"off": [], "on": []}
    for round_ in range(2):
        for state in ("off", "on"):
            stack.manage("register_model", "sentiment", "bundled:sentiment", "--shadow", state)
            time.sleep(6)  # every process reads the versions at most every MODEL_VERSION_CHECK_SECONDS (5)
            before = _shadow_answered(stack)
            texts = unique_texts(base, 20000, f"w6{state}{round_}-")
            row = closed_loop(
                stack,
                clients=args.w6_clients,
                seconds=args.seconds,
                texts=texts,
                path="/api/v1/predictions/?wait=30",
                ok={200},
            )
            row["shadow_during"] = _shadow_answered(stack) - before
            row["tail"] = settle()
            row["shadow_after"] = _shadow_answered(stack) - before - row["shadow_during"]
            print(
                f"W6 shadow {state}: p50 {row['p50_ms']:.0f} ms p95 {row['p95_ms']:.0f} ms, "
                f"{row['per_second']:.1f} texts/s, shadow answers {row['shadow_during']} + {row['shadow_after']} after",
                flush=True,
            )
            rows[state].append(row)
    stack.manage("register_model", "sentiment", "bundled:sentiment", "--shadow", "off")
    return {"rate": args.w6_rate, **rows}


def settle(timeout: float = 180) -> dict:
    """Wait until the worker processes are idle, so the next workload is measured alone.

    A closed loop of single-text requests ends with messages still queued in the broker whose rows
    other tasks already ran (micro-batching): the workers drain them after the loop. That tail is
    work the workload caused but its window did not see; it is reported with the workload.
    """
    began, worker_cpu = time.monotonic(), 0.0
    while time.monotonic() - began < timeout:
        meter = CpuMeter().start()
        time.sleep(0.5)
        used = meter.stop()["worker"]
        worker_cpu += used
        if used < 0.03:
            break
    return {"seconds": round(time.monotonic() - began, 1), "worker_cpu_seconds": round(worker_cpu, 2)}


def report(results: dict, args) -> None:
    raw = results["raw"]
    lines = [
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"model: bundled sentiment ({'int8' if args.int8 else 'fp32'}, {'padded' if args.padded else 'packed'}); stack: {'embedded' if args.embedded else 'PostgreSQL + RabbitMQ + Redis'}",
        "",
        "| workload | clients | throughput | RAW around it | × RAW | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| RAW (in-process, batches of {raw['batch_size']}, sorted): mean of {len(raw['measurements'])} "
        f"({min(raw['measurements']):.1f}–{max(raw['measurements']):.1f}) | – | {raw['per_second']:.1f} texts/s | | 1.00 | | | | |",
    ]

    def cells(row: dict, unit: str) -> str:
        return f"{row['per_second']:.1f} {unit} | {row['raw_per_second']:.1f} | {row['per_second'] / row['raw_per_second']:.2f}"

    for row in results["w1"]:
        lines.append(
            f"| W1 POST ?wait=30 | {row['clients']} | {cells(row, 'texts/s')} | "
            f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} | {row['errors']} |"
        )
    if w2 := results.get("w2"):
        lines.append(
            f"| W2 batches of {w2['batch_size']} | {w2['clients']} | {cells(w2, 'texts/s')} | | | | {w2['errors']} |"
        )
    if w3 := results.get("w3"):
        lines.append(
            f"| W3 cache hits | {w3['clients']} | {cells(w3, 'requests/s')} | "
            f"{w3['p50_ms']:.1f} | {w3['p95_ms']:.1f} | {w3['p99_ms']:.1f} | {w3['errors']} |"
        )
    stages = stage_table(results)
    lines += ["", *([stages, ""] if stages else []), *lanes_table(results), cpu_table(results)]
    table = "\n".join(lines)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    path = args.out / f"{stamp}{'-int8' if args.int8 else ''}.json"
    path.write_text(
        json.dumps(
            {
                "args": {k: _relative(v) for k, v in vars(args).items()},
                "cores": os.cpu_count(),
                **results,
                "table": table,
            },
            indent=2,
        )
    )
    print(f"\nwrote {path}")
    plot(results, args.plot.with_name(args.plot.stem + ("-int8" if args.int8 else "") + args.plot.suffix))


def lanes_table(results: dict) -> list[str]:
    """W4 against W1 at 16 clients and W2 alone, and W5; [] without W4 and W5."""
    lines = []
    w1 = next((row for row in results["w1"] if row["clients"] == 16), None)
    if w4 := results.get("w4"):
        lines += _table_head(
            "W4: 16 interactive clients (POST ?wait=30) while bulk work is queued. Targets: p95 ≤ 2 × W1-16's, "
            "p99 < 1 s, 0 errors; (bulk + interactive) texts/s ≥ 0.8 × W2's.",
            [
                "while",
                "interactive texts/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "p95 ÷ W1-16 p95",
                "bulk texts/s",
                "(bulk + interactive) ÷ W2",
                "errors",
            ],
        )
        for name, row in w4.items():
            against_w1 = f"{row['p95_ms'] / w1['p95_ms']:.2f}" if w1 else ""
            w2 = results.get("w2")
            against_w2 = f"{(row['bulk_per_second'] + row['per_second']) / w2['per_second']:.2f}" if w2 else ""
            lines.append(
                f"| {name} | {row['per_second']:.1f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} "
                f"| {against_w1} | {row['bulk_per_second']:.1f} | {against_w2} | {row['errors']} |"
            )
        lines.append("")
    if w6 := results.get("w6"):
        lines += _table_head(
            f"W6: {w6['on'][0]['clients']} single-text clients with a version shadowed at SHADOW_RATE = {w6['rate']:g}, and without "
            "(alternating, 2 rounds each). Shadow answers are given by the shadow worker (lowest CPU priority, once live traffic pauses).",
            ["shadow", "texts/s", "p50 ms", "p95 ms", "p99 ms", "shadow answers during", "after", "errors"],
        )
        for state in ("off", "on"):
            for row in w6[state]:
                lines.append(
                    f"| {state} | {row['per_second']:.1f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | "
                    f"{row['p99_ms']:.0f} | {row['shadow_during']} | {row['shadow_after']} | {row['errors']} |"
                )
        lines.append("")
    if w5 := results.get("w5"):
        lines += [
            f"W5: two users' batches of {w5['size']} sent at the same moment finished in {w5['first_s']:.1f} s and "
            f"{w5['second_s']:.1f} s: {w5['apart']:.0%} apart (target ≤ 20 %).",
            "",
        ]
    return lines


def _table_head(caption: str, columns: list[str]) -> list[str]:
    """A caption, then a markdown table's header and separator."""
    return [caption, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def stage_table(results: dict) -> str:
    """W1's latency by stage (medians of each stage: they need not add up to the p50); "" without W1."""
    rows = [row for row in results["w1"] if row.get("stages_p50_ms")]
    if not rows:
        return ""
    lines = _table_head(
        "W1 latency by stage, median ms, from the timestamps each answer carries (created_at, started_at,\n"
        "finished_at) and the load generator's send and receive times:",
        ["clients", *STAGES, "p50 end to end"],
    )
    for row in rows:
        stages = row["stages_p50_ms"]
        lines.append(
            f"| {row['clients']} | "
            + " | ".join(f"{stages[name]:.1f}" for name in STAGES)
            + f" | {row['p50_ms']:.1f} |"
        )
    return "\n".join(lines)


def cpu_table(results: dict) -> str:
    """Each workload's CPU time by part of the stack, in percent of both cores over its run."""
    rows = [(f"W1, {row['clients']} client(s)", row) for row in results["w1"]]
    rows += [(name, results[key]) for key, name in (("w2", "W2"), ("w3", "W3")) if key in results]
    rows += [(f"W4, while {variant}", row) for variant, row in results.get("w4", {}).items()]
    lines = _table_head(
        "CPU by part of the stack, % of all cores during the workload; then the tail it left: seconds\n"
        "until the workers were idle again, and their CPU seconds in that time:",
        ["workload", *PARTS, "tail s", "tail worker CPU s"],
    )
    for name, row in rows:
        share = shares(row["cpu_seconds"])
        tail = row.get("tail", {})
        lines.append(
            f"| {name} | "
            + " | ".join(f"{share[part]:.0f}" for part in PARTS)
            + f" | {tail.get('seconds', '')} | {tail.get('worker_cpu_seconds', '')} |"
        )
    return "\n".join(lines)


def _relative(value) -> str:
    """A path inside the checkout or beside it (../shared) relative to it; any other path is this
    machine's own, and its name alone is kept."""
    if isinstance(value, Path):
        relative = os.path.relpath(value.resolve(), ROOT)
        if relative.startswith("../..") or relative.startswith(os.pardir + os.sep + "tmp"):
            return value.name
        return relative
    return str(value)


def plot(results: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (only the plot needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (after the Agg backend is chosen)

    clients = [row["clients"] for row in results["w1"]]
    if not clients:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(clients, [row["per_second"] for row in results["w1"]], marker="o", label="W1 service")
    left.axhline(results["raw"]["per_second"], color="grey", linestyle="--", label="RAW model (mean of the run)")
    left.set(xlabel="concurrent clients", ylabel="texts/s", title="Throughput", xscale="log", xticks=clients)
    left.set_xticklabels(clients)
    left.legend()
    right.plot(clients, [row["p95_ms"] for row in results["w1"]], marker="o", color="tab:red")
    right.set(
        xlabel="concurrent clients", ylabel="ms", title="p95 latency (POST ?wait=30)", xscale="log", xticks=clients
    )
    right.set_xticklabels(clients)
    fig.suptitle(f"mlsite on {os.cpu_count()} cores: single-text requests vs the raw model")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
