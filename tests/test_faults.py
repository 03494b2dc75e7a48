"""Faults on real processes: a worker killed mid-batch, RabbitMQ, Redis and PostgreSQL going away.

The service runs as `make run` runs it (granian web and `celery worker`, the commands of
`manage.py runstack`), but as separate processes so a test can kill one and start another, on
private servers the test owns: a second RabbitMQ node, a `redis-server` and a PostgreSQL cluster,
each on its own port and temporary directory (tests/private_services.py). The shared servers
on the standard ports are never stopped. A private RabbitMQ node was chosen over a TCP proxy in
front of the shared one because only a real broker going down and coming back shows what happens
to messages it holds (unacked deliveries, persistent messages across a crash).

The worker loads tests/fault_plugin.py (`--include`), which lets a test hold a forward pass in the
middle of a batch while it kills something, and records each pass. A trigger in the private
database logs every write of a finished row, so "exactly once" is counted, not inferred.
Beat is not started: the tests run the sweeper themselves (`manage.py sweep`), when they need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import psycopg
import pytest
from django.conf import settings as django_settings

from bench.stack import ROOT, free_port, json_request
from predictions.management.commands.runstack import stack_commands
from predictions.threads import torch_threads_for
from tests.private_services import Postgres, Rabbit, Redis, missing_tools, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

FINISHED = ("succeeded", "failed")
POISON = "FAULT-POISON"

# Every UPDATE that leaves a row finished is logged: a result written twice shows up twice.
FINISH_LOG_SQL = """
CREATE TABLE fault_finish_log (
    id bigserial PRIMARY KEY, prediction_id bigint NOT NULL, status text NOT NULL, task_id text NOT NULL
);
CREATE FUNCTION fault_finish_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_finish_log (prediction_id, status, task_id) VALUES (NEW.id, NEW.status, NEW.task_id);
    RETURN NEW;
END $$;
CREATE TRIGGER fault_finish_log AFTER UPDATE ON predictions_prediction
    FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'failed')) EXECUTE FUNCTION fault_finish_log();
"""

CREATE_USER = (
    "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
    "user = User.objects.create_user('faults', password='pw-faults-1234'); "
    "print(Token.objects.create(user=user).key)"
)


def texts_for(case: str, n: int) -> list[str]:
    """Texts no other test sends (a repeated text would be a cache hit and never reach a worker)."""
    tag = uuid.uuid4().hex[:6]
    words = ["good film", "awful plot", "dull acting", "love it", "so boring", "great movie"]
    return [f"{words[i % len(words)]} {case} {tag} {i}" for i in range(n)]


def assert_batch_accepted(status: int, batch: dict) -> None:
    """202, or 200 if every text had finished when the answer was built (a worker that quick): the
    status says what the body's `finished` says."""
    assert status in (200, 202), batch
    assert (status == 200) == batch["finished"], batch


class Servers:
    def __init__(self, rabbit: Rabbit, redis: Redis, postgres: Postgres) -> None:
        self.rabbit, self.redis, self.postgres = rabbit, redis, postgres


class Site:
    """The web and worker processes of the service, on the private servers; the test may kill either."""

    def __init__(self, workdir: Path, env: dict[str, str], database_url: str) -> None:
        self.workdir = workdir
        self.env = env
        self.database_url = database_url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.hold_file = Path(env["FAULT_HOLD_FILE"])
        self.passes_file = Path(env["FAULT_PASSES_FILE"])
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_log: Path | None = None
        self.workers_started = 0
        self.token = ""

    # --- processes ---------------------------------------------------------------------------

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, f"manage.py {' '.join(args)}: {result.stderr[-3000:]}"
        return result.stdout

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen:
        with open(log, "a") as handle:
            return subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _commands(self) -> dict[str, list[str]]:
        return stack_commands(bind=f"127.0.0.1:{self.port}", web_workers=1, web_threads=4)

    def web_start(self) -> None:
        self.web = self._spawn(self._commands()["web"], self.workdir / "web.log")

        def up() -> bool:
            assert self.web.poll() is None, f"web exited\n{self.logs()}"
            with contextlib.suppress(OSError):
                return self.request("GET", "/healthz", auth=False, timeout=2)[0] == 200
            return False

        wait_until(up, 60, "web answering /healthz", self.logs)

    def worker_start(self) -> None:
        """A new `celery worker` (the runstack command) with the fault plugin, ready to consume."""
        self.workers_started += 1
        self.worker_log = self.workdir / f"worker-{self.workers_started}.log"
        command = [
            *self._commands()["worker"],
            "--without-gossip",
            "--without-mingle",
            "--include",
            "tests.fault_plugin",
        ]
        self.worker = self._spawn(command, self.worker_log)

        def ready() -> bool:
            assert self.worker.poll() is None, f"worker exited\n{self.logs()}"
            return " ready." in self.worker_log.read_text(errors="replace")

        wait_until(ready, 90, "worker ready", self.logs)

    def worker_kill(self) -> None:
        """SIGKILL to the worker's main process and its pool: nothing gets to ack, reject or clean up."""
        pool = psutil.Process(self.worker.pid).children(recursive=True)
        _killpg(self.worker, signal.SIGKILL)
        for process in pool:  # the group's signal reached them too; make sure before going on
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(pool, timeout=10)

    def _stop(self, process: subprocess.Popen | None) -> None:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _killpg(process, signal.SIGKILL)
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # any pool child left behind

    def stop(self) -> None:
        self.hold_file.unlink(missing_ok=True)
        self._stop(self.worker)
        self._stop(self.web)

    def logs(self) -> str:
        parts = []
        for path in (self.workdir / "web.log", self.worker_log):
            if path and path.exists():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    # --- HTTP and the database ------------------------------------------------------------------

    def request(self, method: str, path: str, body=None, *, auth: bool = True, timeout: float = 60):
        return json_request(method, self.base + path, body, token=self.token if auth else "", timeout=timeout)

    def http(self, method: str, path: str, body=None, *, token: str | None = None, headers=(), timeout: float = 60):
        """(status, headers, raw body): for checks json_request cannot make (content type, Retry-After)."""
        request = urllib.request.Request(
            self.base + path, data=None if body is None else json.dumps(body).encode(), method=method
        )
        request.add_header("Content-Type", "application/json")
        request.add_header("Authorization", f"Token {self.token if token is None else token}")
        for name, value in headers:
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def web_backends(self, postgres_port: int) -> list[int]:
        """The PostgreSQL backends (pids) serving the web process's connections."""
        web = psutil.Process(self.web.pid)
        ports = {
            conn.laddr.port
            for process in (web, *web.children(recursive=True))
            for conn in process.net_connections(kind="tcp")
            if conn.raddr and conn.raddr.port == postgres_port
        }
        rows = self.sql("SELECT pid, client_port FROM pg_stat_activity WHERE datname = 'mlsite'")
        return [pid for pid, port in rows if port in ports]

    def sql(self, query: str, params=()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def batch_ids(self, batch_id: int) -> list[int]:
        rows = self.sql("SELECT id FROM predictions_prediction WHERE batch_id = %s ORDER BY position", [batch_id])
        return [pk for (pk,) in rows]

    def rows(self, ids: list[int]) -> dict[int, dict]:
        found = self.sql(
            "SELECT id, status, attempts, error, task_id, published_at, cached FROM predictions_prediction"
            " WHERE id = ANY(%s)",
            [ids],
        )
        keys = ("status", "attempts", "error", "task_id", "published_at", "cached")
        return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in found}

    def wait_finished(self, ids: list[int], timeout: float = 60) -> dict[int, dict]:
        wait_until(
            lambda: all(r["status"] in FINISHED for r in self.rows(ids).values()),
            timeout,
            f"rows {ids} finished",
            lambda: f"{self.rows(ids)}\n{self.logs()}",
        )
        return self.rows(ids)

    def assert_each_written_once(self, ids: list[int]) -> None:
        """One write of a finished result per row (the trigger's log), and no earlier result archived."""
        writes = dict(
            self.sql(
                "SELECT prediction_id, count(*) FROM fault_finish_log WHERE prediction_id = ANY(%s) GROUP BY 1", [ids]
            )
        )
        assert writes == dict.fromkeys(ids, 1), writes
        history = self.sql("SELECT count(*) FROM predictions_predictionresult WHERE prediction_id = ANY(%s)", [ids])
        assert history == [(0,)]

    def task_result(self, task_id: str) -> dict | None:
        found = self.sql("SELECT status, result FROM django_celery_results_taskresult WHERE task_id = %s", [task_id])
        if not found:
            return None
        status, result = found[0]
        return {"status": status, "result": json.loads(result) if result else None}

    # --- forward passes (tests/fault_plugin.py) ---------------------------------------------------

    @contextlib.contextmanager
    def held(self):
        """Forward passes that start inside this block wait until it ends."""
        self.hold_file.touch()
        try:
            yield
        finally:
            self.hold_file.unlink(missing_ok=True)

    def passes(self) -> list[dict]:
        if not self.passes_file.exists():
            return []
        return [json.loads(line) for line in self.passes_file.read_text().splitlines() if line.strip()]

    def wait_pass_started(self, texts: list[str], timeout: float = 60) -> dict:
        """The first forward pass that started on any of these texts."""
        wanted = set(texts)

        def started() -> dict | None:
            return next((p for p in self.passes() if p["event"] == "start" and wanted & set(p["texts"])), None)

        wait_until(lambda: started() is not None, timeout, "a forward pass on the test's texts", self.logs)
        return started()

    def passes_ended(self, texts: list[str]) -> dict[str, int]:
        """How many forward passes that completed computed each text."""
        counts = dict.fromkeys(texts, 0)
        for record in self.passes():
            if record["event"] == "end":
                for text in record["texts"]:
                    if text in counts:
                        counts[text] += 1
        return counts


def _killpg(process: subprocess.Popen | None, sig: int) -> None:
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    missing = missing_tools()
    if missing:
        pytest.skip(f"the fault tests start private servers; this machine lacks: {', '.join(missing)}")
    root = tmp_path_factory.mktemp("fault-servers")
    (root / "rabbit").mkdir()
    (root / "redis").mkdir()
    rabbit, redis, postgres = Rabbit(root / "rabbit"), Redis(root / "redis"), Postgres()
    try:
        rabbit.launch()  # the slowest to come up: it starts while the others do
        postgres.start()
        redis.start()
        rabbit.wait_ready()
        yield Servers(rabbit, redis, postgres)
    finally:
        for end in (rabbit.kill, redis.kill, postgres.stop, postgres.remove):
            with contextlib.suppress(Exception):
                end()


@pytest.fixture(scope="module")
def site(servers, tiny_sentiment_dir, tiny_emotions_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fault-site")
    with psycopg.connect(servers.postgres.admin_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE mlsite")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FAULT_", "RABBITMQ_"))},
        "DATABASE_URL": servers.postgres.url,
        "CELERY_BROKER_URL": servers.rabbit.url,
        "REDIS_URL": servers.redis.url,
        "CELERY_QUEUE": django_settings.CELERY_TASK_DEFAULT_QUEUE,  # what stack_commands' worker consumes
        "MLSITE_MODELS": f"sentiment=path:{tiny_sentiment_dir},emotions=path:{tiny_emotions_dir}",
        "MLSITE_VAR_DIR": str(workdir / "var"),
        "HF_HUB_OFFLINE": "1",
        "DEBUG": "0",
        "PUBLISH_CHUNK_ROWS": "2",  # a batch of texts is several messages
        "FAULT_HOLD_FILE": str(workdir / "hold"),
        "FAULT_PASSES_FILE": str(workdir / "passes.jsonl"),
        "FAULT_POISON": POISON,
    }
    site = Site(workdir, env, servers.postgres.url)
    try:
        site.manage("migrate", "--noinput")
        site.token = site.manage("shell", "-c", CREATE_USER).strip().splitlines()[-1]
        site.sql(FINISH_LOG_SQL)
        site.web_start()
        site.worker_start()
        yield site
    finally:
        site.stop()


@pytest.fixture
def stack(site, servers):
    """The site with every server up; whatever a test stopped is brought back after it, even on failure."""
    yield site
    site.hold_file.unlink(missing_ok=True)
    if servers.redis.process.poll() is None:
        servers.redis.resume()
    else:
        servers.redis.start()
    if servers.rabbit.process.poll() is None:
        servers.rabbit.resume()
    else:
        servers.rabbit.start()
    if not servers.postgres.running():
        servers.postgres.start()
    if site.worker.poll() is not None:
        site.worker_start()


# --- 1. A worker killed in the middle of a batch ------------------------------------------------


def _submit_held_batch(stack: Site, case: str, n: int) -> tuple[list[str], list[int], dict]:
    """POST a batch while forward passes are held; returns its texts, row ids and the pass that started."""
    texts = texts_for(case, n)
    status, batch = stack.request("POST", "/api/v1/batches/", {"texts": texts})
    assert_batch_accepted(status, batch)
    ids = stack.batch_ids(batch["id"])
    started = stack.wait_pass_started(texts)
    return texts, ids, started


def _rows_in_pass(forward_pass: dict, texts: list[str], ids: list[int]) -> list[int]:
    return [pk for pk, text in zip(ids, texts, strict=True) if text in forward_pass["texts"]]


def _assert_killed_batch_ran_again_once(stack: Site, texts: list[str], ids: list[int], killed: dict) -> None:
    rows = stack.wait_finished(ids)
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    in_killed_pass = _rows_in_pass(killed, texts, ids)
    assert len(in_killed_pass) > 1  # it died in the middle of a batch, not of a single text
    assert {pk: rows[pk]["attempts"] for pk in in_killed_pass} == dict.fromkeys(in_killed_pass, 2)
    stack.assert_each_written_once(ids)
    ended = [p for p in stack.passes() if p["event"] == "end" and p["texts"] == killed["texts"]]
    assert not ended  # the killed pass never finished...
    assert stack.passes_ended(texts) == dict.fromkeys(texts, 1)  # ...and each text was computed once after it


def test_a_pool_process_killed_mid_batch_has_every_row_run_again_exactly_once(stack):
    """acks_late + reject_on_worker_lost: the worker's main process requeues the message of the child
    it lost; the new child reclaims the rows the dead one held and runs each once."""
    with stack.held():
        texts, ids, started = _submit_held_batch(stack, "pool-killed", 6)
        child = psutil.Process(started["pid"])
        assert child.ppid() == stack.worker.pid  # a pool process of the running worker
        held = _rows_in_pass(started, texts, ids)
        assert {r["status"] for r in stack.rows(held).values()} == {"running"}
        child.kill()
        child.wait(timeout=10)
    _assert_killed_batch_ran_again_once(stack, texts, ids, started)
    assert stack.worker.poll() is None  # the same worker carried on with a new pool process


@pytest.mark.parametrize("lane", ["interactive", "background"])
def test_a_pool_process_killed_mid_pass_in_each_lane_has_every_row_run_again_once(stack, lane):
    """The test above is the bulk lane (a batch); the same for single texts and for a re-run."""
    texts = texts_for(f"lane-{lane}", 4)
    if lane == "background":  # rows that ran once, then `reprocess` while passes are held
        status, batch = stack.request("POST", "/api/v1/batches/", {"texts": texts})
        assert_batch_accepted(status, batch)
        ids = stack.batch_ids(batch["id"])
        stack.wait_finished(ids)
    ended_before = stack.passes_ended(texts)
    seen = len(stack.passes())
    with stack.held():
        if lane == "interactive":
            ids = [stack.request("POST", "/api/v1/predictions/", {"text": text})[1]["id"] for text in texts]
        else:
            stack.manage("reprocess", "--batch", str(batch["id"]))

        def started_now() -> dict | None:  # a pass that started after the ones the batch ran in
            return next(
                (p for p in stack.passes()[seen:] if p["event"] == "start" and set(texts) & set(p["texts"])), None
            )

        wait_until(started_now, 60, "a held pass on the texts", stack.logs)
        started = started_now()
        child = psutil.Process(started["pid"])
        assert child.ppid() == stack.worker.pid
        child.kill()
        child.wait(timeout=10)
    rows = stack.wait_finished(ids)
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    assert not [p for p in stack.passes()[seen:] if p["event"] == "end" and p["pid"] == started["pid"]]  # killed
    # Each text computed once more than before, whichever pass took it after the kill.
    assert stack.passes_ended(texts) == {text: n + 1 for text, n in ended_before.items()}
    runs = 1 if lane == "interactive" else 2  # a re-run writes each row a second time...
    writes = dict(
        stack.sql(
            "SELECT prediction_id, count(*) FROM fault_finish_log WHERE prediction_id = ANY(%s) GROUP BY 1", [ids]
        )
    )
    assert writes == dict.fromkeys(ids, runs), writes
    history = dict(
        stack.sql(
            "SELECT prediction_id, count(*) FROM predictions_predictionresult WHERE prediction_id = ANY(%s) GROUP BY 1",
            [ids],
        )
    )
    assert history == (dict.fromkeys(ids, 1) if lane == "background" else {}), history  # ...archiving the first once


def test_a_worker_killed_mid_batch_leaves_its_rows_to_the_next_worker_which_runs_each_once(stack):
    """The whole worker SIGKILLed: RabbitMQ redelivers the unacked message to a new worker."""
    with stack.held():
        texts, ids, started = _submit_held_batch(stack, "worker-killed", 6)
        assert psutil.Process(started["pid"]).ppid() == stack.worker.pid
        stack.worker_kill()
        assert not psutil.pid_exists(started["pid"]) or psutil.Process(started["pid"]).status() == "zombie"
    stack.worker_start()
    _assert_killed_batch_ran_again_once(stack, texts, ids, started)


def test_pool_processes_killed_on_a_busy_host_are_replaced_and_the_next_prediction_runs(stack):
    """Every pool process SIGKILLed while all cores are busy: each replacement inherits torch and the
    models from the worker's main process, so it comes up inside Celery's start-up limit
    (worker_proc_alive_timeout, 4 s) instead of being killed for importing them, again and again."""
    worker = psutil.Process(stack.worker.pid)
    old = {p.pid for p in worker.children()}
    assert old
    log_before = len(stack.worker_log.read_text(errors="replace"))
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(4, 2 * (os.cpu_count() or 1)))
    ]
    try:
        for pid in old:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()

        def replaced() -> set[int]:
            return {p.pid for p in worker.children()} - old

        wait_until(lambda: len(replaced()) == len(old), 30, "a new pool process for each killed one", stack.logs)
        replacements = replaced()
        time.sleep(10)  # well past the 4 s limit: a replacement that missed it is gone by now
        assert {p.pid for p in worker.children()} == replacements, stack.logs()
        status, body = stack.request("POST", "/api/v1/predictions/?wait=30", {"text": texts_for("busy-host", 1)[0]})
        assert status == 200, (body, stack.logs())
        assert body["status"] == "succeeded", body
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait(timeout=10)
    # Each replacement set torch's threads to its share of the cores (its parent ran with one).
    ready = [
        line
        for line in stack.worker_log.read_text(errors="replace")[log_before:].splitlines()
        if "pool process ready" in line
    ]
    threads = torch_threads_for(django_settings.CELERY_WORKER_CONCURRENCY)
    assert len(ready) == len(old), ready
    assert all(f", {threads} torch threads" in line for line in ready), ready
    # The next tests start from a worker whose pool was never replaced: Celery 5.7 has once ended such
    # a worker ("Unrecoverable error: ValueError('file descriptor is None')", asynpool's
    # _track_child_process) when the broker came back after an outage. `make run` and compose restart it.
    stack.worker_kill()
    stack.worker_start()


# --- 2. RabbitMQ down ----------------------------------------------------------------------


def test_predictions_submitted_while_rabbitmq_is_down_are_answered_202_and_swept_once_it_is_back(stack, servers):
    servers.rabbit.stop()
    single_text, *batch_texts = texts_for("broker-down", 4)
    started = time.monotonic()
    status, single = stack.request("POST", "/api/v1/predictions/", {"text": single_text})
    assert status == 202, single
    assert time.monotonic() - started < 10  # the failed publish does not hang the request
    status, batch = stack.request("POST", "/api/v1/batches/", {"texts": batch_texts})
    assert_batch_accepted(status, batch)
    ids = [single["id"], *stack.batch_ids(batch["id"])]
    rows = stack.rows(ids)
    assert all(r["status"] == "queued" and r["published_at"] is None for r in rows.values()), rows
    status, ready = stack.request("GET", "/readyz", auth=False)
    assert ready["checks"]["broker"] != "ok", ready
    assert ready["checks"]["database"] == "ok", ready

    # No worker while the broker comes back and the sweep runs: a message left in the queue by an
    # earlier test would otherwise reach it first, and its claim (anyone's queued rows) would run
    # these rows before the sweep could count them.
    stack.worker_kill()
    servers.rabbit.start()
    swept = json.loads(stack.manage("sweep", "--queued-after", "0").splitlines()[-1])  # what beat runs
    assert swept["republished"] >= len(ids), swept
    assert all(r["published_at"] is not None for r in stack.rows(ids).values())
    stack.worker_start()
    rows = stack.wait_finished(ids)
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    assert all(r["attempts"] == 1 for r in rows.values())
    stack.assert_each_written_once(ids)

    # The web process publishes again on its own (no restart): a new text goes through at once.
    status, body = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": texts_for("broker-back", 1)[0]})
    assert status == 200, body
    assert body["status"] == "succeeded", body


def test_rabbitmq_crashing_while_a_worker_runs_loses_nothing_and_the_redelivery_changes_nothing(stack, servers):
    with stack.held():
        texts, ids, started = _submit_held_batch(stack, "broker-crash", 3)
        servers.rabbit.kill()
    rows = stack.wait_finished(ids)  # results are written to the database with the broker gone
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    [task_id] = {rows[pk]["task_id"] for pk in _rows_in_pass(started, texts, ids)}  # its message was in flight

    servers.rabbit.start()
    # The message could not be acked, so RabbitMQ delivers it again; the task finds its rows finished.
    wait_until(
        lambda: ((stack.task_result(task_id) or {}).get("result") or {}).get("skipped", 0) > 0,
        60,
        "the redelivered message run (its stored result says the rows were skipped)",
        lambda: f"{stack.task_result(task_id)}\n{stack.logs()}",
    )
    rows = stack.rows(ids)
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in rows.values()), rows
    stack.assert_each_written_once(ids)
    assert stack.passes_ended(texts) == dict.fromkeys(texts, 1)

    status, body = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": texts_for("broker-back", 1)[0]})
    assert status == 200, body
    assert body["status"] == "succeeded", body  # web and worker reconnected


def test_a_hung_rabbitmq_delays_a_submission_by_seconds_not_forever(stack, servers):
    """SIGSTOP: the broker's port still accepts connections but nothing answers, not even publish confirms."""
    warm, text = texts_for("broker-hung", 2)
    status, body = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": warm})
    assert status == 200, body  # the web now holds an open broker connection, as it does in production
    servers.rabbit.pause()
    try:
        started = time.monotonic()
        status, body = stack.request("POST", "/api/v1/predictions/", {"text": text}, timeout=60)
        elapsed = time.monotonic() - started
        assert status == 202, body
        assert body["status"] == "queued", body
        assert elapsed < 20, f"a hung broker held the request {elapsed:.1f}s"
    finally:
        servers.rabbit.resume()
    stack.manage("sweep", "--queued-after", "0")  # in case the timed-out publish never reached the queue
    rows = stack.wait_finished([body["id"]])
    assert rows[body["id"]]["status"] == "succeeded", rows
    stack.assert_each_written_once([body["id"]])


# --- 3. Redis down ----------------------------------------------------------------------------


def test_with_redis_down_predictions_still_work_uncached_and_readyz_names_the_cache(stack, servers):
    servers.redis.kill()
    text, *batch_texts = texts_for("redis-down", 3)
    status, body = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": text})
    assert status == 200, body
    assert body["status"] == "succeeded", body
    assert body["cached"] is False, body
    status, again = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": text})
    assert status == 200, again
    assert again["cached"] is False, again  # no cache: computed again
    status, batch = stack.request("POST", "/api/v1/batches/", {"texts": batch_texts})
    assert_batch_accepted(status, batch)
    rows = stack.wait_finished(stack.batch_ids(batch["id"]), timeout=30)
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    status, detail = stack.request("GET", f"/api/v1/batches/{batch['id']}/")
    assert status == 200, detail
    assert detail["finished"], detail
    status, ready = stack.request("GET", "/readyz", auth=False)
    assert ready["checks"]["cache"] != "ok", ready
    assert ready["checks"]["database"] == ready["checks"]["broker"] == "ok", ready

    servers.redis.start()  # empty: no persistence
    wait_until(lambda: stack.request("GET", "/readyz", auth=False)[1]["checks"]["cache"] == "ok", 20, "readyz cache ok")
    fresh = texts_for("redis-back", 1)[0]
    status, first = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": fresh})
    assert status == 200, first
    assert first["cached"] is False, first
    status, second = stack.request("POST", "/api/v1/predictions/", {"text": fresh})
    assert status == 200, second
    assert second["cached"] is True, second  # the cache works again, no restart


def test_a_hung_redis_costs_bounded_timeouts_not_errors(stack, servers):
    """SIGSTOP: Redis accepts connections but never answers (the socket timeouts must bound the wait)."""
    servers.redis.pause()
    try:
        started = time.monotonic()
        status, body = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": texts_for("redis-hung", 1)[0]})
        elapsed = time.monotonic() - started
        assert status == 200, body
        assert body["status"] == "succeeded", body
        assert elapsed < 10, f"a hung Redis cost {elapsed:.1f}s"
        status, ready = stack.request("GET", "/readyz", auth=False, timeout=15)
        assert ready["checks"]["cache"] != "ok", ready
    finally:
        servers.redis.resume()


# --- 4. PostgreSQL restarted ----------------------------------------------------------------------


def test_web_and_worker_reconnect_after_postgresql_restarts_and_no_prediction_is_lost(stack, servers):
    status, body = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": texts_for("pg-warm", 1)[0]})
    assert status == 200, body  # web and worker hold open database connections (DB_CONN_MAX_AGE)
    log_before = stack.worker_log.read_text(errors="replace")

    with stack.held():
        texts, ids, held_pass = _submit_held_batch(stack, "pg-restart", 3)
        servers.postgres.restart()  # every session is terminated, the worker's included
        # The first request after the restart already answers: the web checks its connection first.
        status, detail = stack.request("GET", f"/api/v1/predictions/{ids[0]}/")
        assert status == 200, (detail, stack.logs())
    # The worker's result write fails on its dead connection; the task is retried and reclaims its rows.
    rows = stack.wait_finished(ids)
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    in_held_pass = _rows_in_pass(held_pass, texts, ids)
    assert in_held_pass, rows
    assert all(rows[pk]["attempts"] == 2 for pk in in_held_pass), rows  # failed once, then rerun
    assert all(r["attempts"] <= 2 for r in rows.values()), rows  # a chunk not yet started ran once
    stack.assert_each_written_once(ids)
    worker_log = stack.worker_log.read_text(errors="replace")[len(log_before) :]
    errors_and_retries = [line[:400] for line in worker_log.splitlines() if "rror" in line or "etry" in line]
    assert "retry: Retry in" in worker_log, "\n".join(errors_and_retries)
    assert "OperationalError" in worker_log, "\n".join(errors_and_retries)

    more = texts_for("pg-after", 3)
    answers = [stack.request("POST", "/api/v1/predictions/?wait=20", {"text": t}) for t in more]
    assert [status for status, _ in answers] == [200, 200, 200], answers
    assert all(body["status"] == "succeeded" for _, body in answers)

    # Restarted again while web and worker sit idle on open connections: the next request and the
    # next task check their connection before using it, so neither fails nor needs a retry.
    servers.postgres.restart()
    status, body = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": texts_for("pg-idle", 1)[0]})
    assert status == 200, body
    assert body["status"] == "succeeded", body
    assert stack.rows([body["id"]])[body["id"]]["attempts"] == 1


def _assert_json_503(status: int, headers, raw: bytes, what: str) -> dict:
    assert status == 503, (what, status, raw[:500])
    assert headers["Content-Type"] == "application/json", (what, headers["Content-Type"], raw[:300])
    assert int(headers["Retry-After"]) >= 1, what
    return json.loads(raw)


def _warm(stack: Site, case: str) -> dict:
    """A prediction run to the end: the web holds an open connection and remembers the token, the
    worker's processes have loaded their models."""
    status, body = stack.request("POST", "/api/v1/predictions/", {"text": texts_for(case, 1)[0]})
    assert status in (200, 202), body
    stack.wait_finished([body["id"]], timeout=120)
    return body


def test_requests_while_postgresql_is_down_are_503_with_retry_after_and_store_nothing(stack, servers):
    warm = _warm(stack, "pg-down-warm")
    # A token the web has never seen: its look-up needs the database.
    unseen_token = stack.manage("shell", "-c", CREATE_USER.replace("'faults'", "'faults-unseen'")).split()[-1]

    def stored() -> list[tuple]:
        return stack.sql(
            "SELECT (SELECT count(*) FROM predictions_prediction), (SELECT count(*) FROM predictions_batch),"
            " (SELECT count(*) FROM predictions_idempotencykey)"
        )

    before = stored()
    text, *batch_texts = texts_for("pg-down", 3)
    servers.postgres.stop()
    try:
        for what, method, path, body, token, headers in [
            ("submit", "POST", "/api/v1/predictions/", {"text": text}, None, ()),
            ("submit and wait", "POST", "/api/v1/predictions/?wait=5", {"text": text}, None, ()),
            ("keyed submit", "POST", "/api/v1/predictions/", {"text": text}, None, [("Idempotency-Key", "pg-down-1")]),
            ("batch", "POST", "/api/v1/batches/", {"texts": batch_texts}, None, ()),
            ("list", "GET", "/api/v1/predictions/", None, None, ()),
            ("detail", "GET", f"/api/v1/predictions/{warm['id']}/", None, None, ()),
            ("token look-up", "POST", "/api/v1/predictions/", {"text": text}, unseen_token, ()),
        ]:
            answer = _assert_json_503(*stack.http(method, path, body, token=token, headers=headers), what)
            assert set(answer) == {"detail"}, (what, answer)
        ready = _assert_json_503(*stack.http("GET", "/readyz"), "readyz")
        assert ready["checks"]["database"].startswith("error: OperationalError"), ready
    finally:
        servers.postgres.start()
    assert stored() == before  # nothing was stored

    # Django connects again by itself: the next requests succeed, the unseen token's too.
    status, again = stack.request("POST", "/api/v1/predictions/?wait=20", {"text": text})
    assert status in (200, 202), again
    assert stack.wait_finished([again["id"]])[again["id"]]["status"] == "succeeded"
    status, _, raw = stack.http("POST", "/api/v1/batches/", {"texts": batch_texts}, token=unseen_token)
    assert status in (200, 202), raw[:500]
    assert stack.request("GET", "/readyz", auth=False)[0] == 200


def _assert_answered_with_the_row(status: int, headers, raw: bytes, stack: Site, resource: str) -> dict:
    """2xx with the object and its absolute URL (also in Location, for a POST's answer)."""
    assert status in (200, 202), (status, raw[:500], stack.logs())
    body = json.loads(raw)
    assert body["url"] == f"{stack.base}/api/v1/{resource}/{body['id']}/", body
    assert headers["Location"] in (None, body["url"]), (headers["Location"], body)
    return body


def test_a_waiting_request_whose_row_is_committed_never_answers_5xx_when_postgresql_drops_it(stack, servers):
    """?wait on a committed row: a dropped connection is replaced and the wait goes on; a database
    gone for good ends the wait with a 202 and the row's URL. The row is never lost."""
    _warm(stack, "pg-wait-warm")
    single, *batch_texts = texts_for("pg-wait-dropped", 3)
    with stack.held(), ThreadPoolExecutor(2) as pool:
        waiting_post = pool.submit(stack.http, "POST", "/api/v1/predictions/?wait=15", {"text": single})
        stack.wait_pass_started([single])  # its row is committed and held running: the request waits
        status, _, raw = stack.http("POST", "/api/v1/batches/", {"texts": batch_texts})
        assert status == 202, raw
        batch = json.loads(raw)
        waiting_get = pool.submit(stack.http, "GET", f"/api/v1/batches/{batch['id']}/?wait=10")
        time.sleep(1)  # the GET has read its batch and waits too
        dropped = stack.web_backends(servers.postgres.port)
        assert dropped, "the web process holds no connection"
        stack.sql("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [dropped])
        post_answer = waiting_post.result(timeout=60)
        posted = _assert_answered_with_the_row(*post_answer, stack, "predictions")
        assert post_answer[1]["Location"] == posted["url"]
        got = _assert_answered_with_the_row(*waiting_get.result(timeout=60), stack, "batches")
    assert posted["status"] == "running", posted  # read again after the drop, on a new connection
    assert got["finished"] is False, got
    assert not set(dropped) & set(stack.web_backends(servers.postgres.port))

    plain, keyed = texts_for("pg-wait-stopped", 2)
    with stack.held(), ThreadPoolExecutor(2) as pool:
        waits = [
            pool.submit(stack.http, "POST", "/api/v1/predictions/?wait=20", {"text": plain}),
            pool.submit(
                stack.http, "POST", "/api/v1/predictions/?wait=20", {"text": keyed}, headers=[("Idempotency-Key", "k1")]
            ),
        ]
        wait_until(  # both rows committed (a keyed one with its key): both requests are in their wait
            lambda: (
                stack.sql("SELECT count(*) FROM predictions_prediction WHERE text = ANY(%s)", [[plain, keyed]])
                == [(2,)]
            ),
            30,
            "both rows committed",
            stack.logs,
        )
        time.sleep(0.5)
        servers.postgres.stop()
        answers = [_assert_answered_with_the_row(*wait.result(timeout=60), stack, "predictions") for wait in waits]
        servers.postgres.start()
    # The answer is the row as it was before the wait, with its Location.
    assert all(wait.result()[1]["Location"] == answer["url"] for wait, answer in zip(waits, answers, strict=True))
    assert [(a["status"], a["text"]) for a in answers] == [("queued", plain), ("queued", keyed)], answers
    ids = [posted["id"], *stack.batch_ids(batch["id"]), *(a["id"] for a in answers)]
    rows = stack.wait_finished(ids)  # every row was kept and runs once the database is back
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    stack.assert_each_written_once(ids)
    status, headers, raw = stack.http(
        "POST", "/api/v1/predictions/?wait=20", {"text": keyed}, headers=[("Idempotency-Key", "k1")]
    )
    assert status == 202, raw[:500]  # the first answer, replayed: no second row
    assert headers["Idempotent-Replayed"] == "true"
    assert json.loads(raw)["id"] == answers[1]["id"]


# --- 5. A text that breaks the model, on a real worker --------------------------------------------


def test_a_text_that_breaks_the_model_fails_only_its_own_row_and_is_not_retried(stack):
    """Transient errors (database, connection) retry with backoff: see the PostgreSQL test above and
    tests/test_tasks.py::test_transient_database_errors_are_retried_and_others_are_not."""
    texts = texts_for("poison", 3)
    texts[1] = f"{POISON} {texts[1]}"
    status, batch = stack.request("POST", "/api/v1/batches/", {"texts": texts})
    assert_batch_accepted(status, batch)
    ids = stack.batch_ids(batch["id"])
    rows = stack.wait_finished(ids, timeout=30)
    assert [rows[pk]["status"] for pk in ids] == ["succeeded", "failed", "succeeded"], rows
    assert rows[ids[1]]["error"] == "RuntimeError: the model broke on this input"
    assert all(r["attempts"] == 1 for r in rows.values())  # a permanent error is not retried
    stack.assert_each_written_once(ids)
    status, detail = stack.request("GET", f"/api/v1/batches/{batch['id']}/")
    assert status == 200, detail
    assert detail["counts"]["failed"] == 1, detail
    assert detail["counts"]["succeeded"] == 2, detail


def test_no_prediction_is_left_queued_or_running(stack):
    """After every fault above, nothing is stuck (runs last in this module)."""
    stuck = stack.sql("SELECT id, status FROM predictions_prediction WHERE status NOT IN ('succeeded', 'failed')")
    assert stuck == []
    assert stack.web.poll() is None  # one web process lived through every fault, never restarted
