"""The verdicts `make soak` (bench/soak.py) reaches: they must catch what they claim to catch."""

from __future__ import annotations

import pytest
from django.db import connection

from bench.soak import FINISH_TRIGGER, Load, database_checks, memory_verdict
from predictions.models import Prediction, PredictionStatus


@pytest.mark.django_db
def test_the_database_checks_catch_lost_unfinished_unexplained_and_twice_finished_rows(owner):
    with connection.cursor() as cursor:
        cursor.execute(FINISH_TRIGGER)  # rolled back with the test's transaction

    def query(sql: str) -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()

    def row(**fields) -> Prediction:
        return Prediction.objects.create(owner=owner, text="t", model_name="sentiment", **fields)

    fine = row()
    Prediction.objects.filter(pk=fine.pk).update(status=PredictionStatus.RUNNING, attempts=1)
    Prediction.objects.filter(pk=fine.pk).update(status=PredictionStatus.SUCCEEDED)
    twice = row(status=PredictionStatus.SUCCEEDED)
    Prediction.objects.filter(pk=twice.pk).update(status=PredictionStatus.RUNNING)
    Prediction.objects.filter(pk=twice.pk).update(status=PredictionStatus.SUCCEEDED)
    stuck = row(status=PredictionStatus.QUEUED)
    silent = row(status=PredictionStatus.FAILED)
    explained = row(status=PredictionStatus.FAILED, error="ValueError: bad", attempts=4)
    load = Load()
    load.record("post", 202, predictions=[fine.pk, twice.pk, stuck.pk, silent.pk, explained.pk, 10**9])

    checks = database_checks(query, load, max_attempts=3)

    assert checks["lost"] == [10**9]
    assert checks["unfinished"] == [stuck.pk]
    assert checks["failed_without_reason"] == [silent.pk]
    assert checks["finished_twice"] == [twice.pk]
    assert checks["finished_never_recorded"] == []
    assert checks["over_attempts"] == [explained.pk]
    assert checks["history_rows"] == 0
    assert checks["unknown_to_clients"] == 0


def test_memory_that_keeps_growing_fails_and_memory_that_levels_off_passes():
    flat = [{"web": 200.0 + (i % 3), "worker": 90.0, "worker child": 500.0, "beat": 86.0} for i in range(12)]
    lines, grew = memory_verdict(flat, tolerance=0.25, slack_mb=32)
    assert grew == []
    assert len(lines) == 4
    leaking = [{**sample, "web": 200.0 + 40 * i} for i, sample in enumerate(flat)]
    lines, grew = memory_verdict(leaking, tolerance=0.25, slack_mb=32)
    assert grew == ["web"]
    assert "GREW" in lines[0]
