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
