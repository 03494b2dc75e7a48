"""The bench's latency-by-stage arithmetic (bench/run.py): the answer's timestamps split the time
between the load generator's send and receive."""

import datetime as dt

import pytest

from bench.run import STAGES, stage_times


def test_stage_times_split_the_request_at_the_rows_timestamps():
    sent = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC).timestamp()
    body = {  # as the API writes them: ISO 8601, 'Z' for UTC
        "created_at": "2026-11-26T12:00:00.003000Z",
        "started_at": "2026-11-26T12:00:00.010500Z",
        "finished_at": "2026-11-26T12:00:00.035500Z",
    }
    stages = stage_times(body, sent, sent + 0.041)
    assert len(stages) == len(STAGES)
    assert stages == pytest.approx((3.0, 7.5, 25.0, 5.5), abs=1e-3)
    assert sum(stages) == pytest.approx(41.0, abs=1e-3)


def test_stage_times_read_offsets_other_than_utc():
    sent = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC).timestamp()
    body = {
        "created_at": "2026-11-26T13:00:00.001000+01:00",
        "started_at": "2026-11-26T13:00:00.002000+01:00",
        "finished_at": "2026-11-26T13:00:00.004000+01:00",
    }
    assert stage_times(body, sent, sent + 0.005) == pytest.approx((1.0, 1.0, 2.0, 1.0), abs=1e-3)


def test_the_closed_loop_counts_failed_answers_by_what_they_said():
    """A bench report says what failed, not only how many (a full queue, a failed row, a dropped
    connection): the closed loop keeps the errors by kind."""
    import itertools  # noqa: PLC0415
    import json  # noqa: PLC0415
    import threading  # noqa: PLC0415
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: PLC0415
    from types import SimpleNamespace  # noqa: PLC0415

    from bench.run import closed_loop  # noqa: PLC0415

    answers = itertools.cycle(
        [
            (200, {"status": "succeeded", "cached": True}),
            (503, {"detail": "The queue is full"}),
            (200, {"status": "failed"}),
        ]
    )
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                status, body = next(answers)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stack = SimpleNamespace(port=server.server_address[1], token="t")
        row = closed_loop(stack, clients=1, seconds=0.3, texts=["a"], path="/x", ok={200})
    finally:
        server.shutdown()
    assert row["errors"] >= 2
    assert set(row["error_kinds"]) == {"503 None: The queue is full", "200 failed: "}
    assert sum(row["error_kinds"].values()) == row["errors"]
