"""The worker's claim and write, the prebuilt INSERT and the CSV export through PgBouncer in transaction mode.

PgBouncer runs here as it would in front of a shared PostgreSQL, with `server_reset_query_always`
so that every transaction ends with `DISCARD ALL`: what a transaction pooler does to a connection
another client's transaction takes next, made certain on a single connection. What outlives a
transaction (a prepared statement, a server-side cursor) is then gone by the next statement.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings

ROOT = Path(__file__).resolve().parent.parent
PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")

pytestmark = pytest.mark.django_db(transaction=True)

# Through the real code paths: the prebuilt INSERT run past psycopg's prepare threshold (5), claims
# and one-statement writes of the same size as many times, then the admin's CSV export (an iterator).
SCRIPT = """
from django.contrib.auth import get_user_model
from django.utils import timezone
from predictions.export import csv_rows
from predictions.models import Prediction
from predictions.services import sql, worker
from textclf import LabelScores

user = get_user_model().objects.create(username="through-pgbouncer")
for i in range(12):
    sql.prediction_insert(Prediction(owner=user, text=f"text {i}", text_sha256=f"{i:064x}", model_name="sentiment"))
answer = LabelScores(label="positive", score=0.9, scores={"negative": 0.1, "positive": 0.9})
written = 0
for n in range(6):
    rows = worker.predictions_claim([], task_id=f"pgbouncer-{n}", limit=2, others=True)
    for row in rows:
        worker._row_fill(row, answer, version="v1", finished=timezone.now())
    written += worker._results_write("sentiment", "v1", rows, [answer] * len(rows), task_id=f"pgbouncer-{n}")["succeeded"]
exported = sum(1 for _ in csv_rows(Prediction.objects.filter(owner=user))) - 1
print("written", written, "exported", exported)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pgbouncer():
    if PGBOUNCER is None:
        if os.environ.get("CI_REQUIRE_PGBOUNCER") == "1":
            pytest.fail("pgbouncer is not installed (.ci/run installs Debian's pgbouncer)")
        pytest.skip("pgbouncer not installed; .ci/run installs it")
    database = django_settings.DATABASES["default"]
    if "postgresql" not in database["ENGINE"]:
        pytest.skip("PgBouncer pools PostgreSQL connections")
    port = free_port()
    # Its own directory under /tmp, open to all: PgBouncer refuses to run as root, so as root it runs
    # as postgres (-u), which cannot reach pytest's private tmp_path.
    tmp_path = Path(tempfile.mkdtemp(prefix="mlsite-pgbouncer-"))
    tmp_path.chmod(0o777)
    config = tmp_path / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n* = host={database['HOST']} port={database['PORT']} user={database['USER']}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\ndefault_pool_size = 2\n"
        "server_reset_query = DISCARD ALL\nserver_reset_query_always = 1\n"
        f"logfile = {tmp_path / 'pgbouncer.log'}\npidfile = {tmp_path / 'pgbouncer.pid'}\n"
    )
    command = [PGBOUNCER, str(config)] + (["-u", "postgres"] if os.geteuid() == 0 else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else "pgbouncer exited"
        time.sleep(0.1)
    yield f"postgres://{database['USER']}@127.0.0.1:{port}/{database['NAME']}"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    shutil.rmtree(tmp_path, ignore_errors=True)


def through(url: str, *, pooling: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url, "DATABASE_TRANSACTION_POOLING": "1" if pooling else "0"}
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_claims_writes_inserts_and_the_export_work_through_a_transaction_pooler(pgbouncer):
    result = through(pgbouncer, pooling=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "written 12 exported 12"


def test_without_the_setting_the_export_s_server_side_cursor_fails_through_it(pgbouncer):
    """DATABASE_TRANSACTION_POOLING is what makes the test above pass: the export's server-side
    cursor does not survive the pooler's reset between transactions."""
    result = through(pgbouncer, pooling=False)
    assert result.returncode != 0
    assert "portal" in result.stderr, result.stderr[-2000:]
    assert "does not exist" in result.stderr  # portal "_django_curs_…" does not exist


def test_no_statement_is_ever_prepared_so_the_pooler_may_switch_connections():
    """psycopg prepares a query it has run `prepare_threshold` times; a prepared statement lives on one
    server connection, which a transaction pooler does not keep. Django leaves it off: keep it so."""
    from django.db import connection  # noqa: PLC0415

    if connection.vendor != "postgresql":
        pytest.skip("psycopg's prepared statements")
    connection.ensure_connection()
    assert connection.connection.prepare_threshold is None
