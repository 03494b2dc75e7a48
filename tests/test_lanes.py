"""Lanes and turns: which queued rows a worker's claim takes first (docs/architecture.md, Lanes).

Functional, not timed: the order of claims on the real database, as a worker makes them.
"""

from __future__ import annotations

import io
from collections import Counter

import pytest
from django.core.management import call_command
from django.utils import timezone

from predictions.models import Lane, Prediction, PredictionStatus
from predictions.services import reprocess as reprocess_service
from predictions.services import worker
from predictions.services.lanes import turns_by_id, turns_take
from predictions.services.submission import batch_create, prediction_create

pytestmark = pytest.mark.django_db


def claim(limit: int = 128) -> list[Prediction]:
    return worker.predictions_claim([], task_id="claimer", limit=limit, others=True)


def finished_rows(owner, n: int, prefix: str) -> list[int]:
    rows = Prediction.objects.bulk_create(
        Prediction(
            owner=owner,
            text=f"{prefix} {i}",
            model_name="sentiment",
            status=PredictionStatus.SUCCEEDED,
            label="positive",
            finished_at=timezone.now(),
        )
        for i in range(n)
    )
    return [row.pk for row in rows]


def requeue(ids: list[int]) -> None:
    """What `reprocess` does to the rows it chose (queued mode; the publishing runs after commit)."""
    run, _ = reprocess_service.reprocess_run_open(selectors={"ids": ids}, resume=False)
    reprocess_service.reprocess_dispatch(run, ids, chunk_size=50, sync=False)


def test_each_submission_path_puts_its_rows_in_its_lane(owner, staff):
    single = prediction_create(owner=owner, text="one text", model_name="sentiment")
    batch = batch_create(owner=owner, texts=["a", "b"], model_name="sentiment")
    ids = finished_rows(owner, 2, "old")
    requeue(ids)
    lanes = dict(Prediction.objects.values_list("pk", "lane"))
    assert lanes[single.pk] == Lane.INTERACTIVE
    assert {lanes[p.pk] for p in batch.predictions.all()} == {Lane.BULK}
    assert {lanes[pk] for pk in ids} == {Lane.BACKGROUND}


def test_a_claim_takes_interactive_rows_first_then_bulk_rows_with_a_share_kept_for_background(owner, settings):
    settings.CLAIM_BULK_ROWS = 10
    settings.BACKGROUND_SHARE = 20
    requeue(finished_rows(owner, 30, "old"))
    batch_create(owner=owner, texts=[f"bulk {i}" for i in range(30)], model_name="sentiment")
    singles = [prediction_create(owner=owner, text=f"single {i}", model_name="sentiment").pk for i in range(3)]

    rows = claim()
    lanes = [row.lane for row in rows]
    assert [row.pk for row in rows[:3]] == singles  # every interactive row, oldest first
    assert Counter(lanes) == {Lane.INTERACTIVE: 3, Lane.BULK: 8, Lane.BACKGROUND: 2}  # 10 bulk and background: 2 kept
    assert lanes == sorted(lanes)  # returned lane by lane: the worker runs them in this order

    settings.BACKGROUND_SHARE = 0
    assert {row.lane for row in claim()} == {Lane.BULK}  # no share: bulk first while it lasts


def test_a_single_text_submitted_behind_a_backlog_is_in_the_next_claim(owner, stranger, settings):
    settings.CLAIM_BULK_ROWS = 16
    batch_create(owner=owner, texts=[f"bulk {i}" for i in range(300)], model_name="sentiment")
    requeue(finished_rows(owner, 300, "old"))
    assert len(claim()) == 16  # the workers are busy with the backlog
    single = prediction_create(owner=stranger, text="is anyone there?", model_name="sentiment")
    assert claim()[0].pk == single.pk


def test_two_owners_batches_sent_together_progress_together(owner, stranger, settings):
    settings.CLAIM_BULK_ROWS = 10
    batch_create(owner=owner, texts=[f"first {i}" for i in range(100)], model_name="sentiment")
    batch_create(owner=stranger, texts=[f"second {i}" for i in range(100)], model_name="sentiment")
    for _ in range(5):  # half of each goes through, a pass at a time
        assert Counter(row.owner_id for row in claim()) == {owner.pk: 5, stranger.pk: 5}


def test_an_owner_with_a_backlog_waits_behind_it_not_in_front_of_newcomers(owner, stranger, settings):
    settings.CLAIM_BULK_ROWS = 10
    for n in range(3):  # the first owner queues three batches
        batch_create(owner=owner, texts=[f"first {n}.{i}" for i in range(50)], model_name="sentiment")
    batch_create(owner=stranger, texts=[f"late {i}" for i in range(20)], model_name="sentiment")
    taken = Counter()
    for _ in range(4):
        taken.update(row.owner_id for row in claim())
    assert taken == {owner.pk: 20, stranger.pk: 20}  # the newcomer's 20 are done within the first 40


def test_a_small_rerun_is_not_queued_behind_a_long_one(owner, settings):
    settings.CLAIM_BULK_ROWS = 10
    settings.BACKGROUND_SHARE = 100
    requeue(finished_rows(owner, 200, "long"))
    for _ in range(3):
        claim()  # the long run is under way
    small = finished_rows(owner, 5, "small")
    requeue(small)
    taken = [row.pk for _ in range(3) for row in claim()]  # 30 of the 175 left
    assert set(small) <= set(taken)


def test_background_rows_still_run_while_interactive_traffic_keeps_coming(owner, settings):
    settings.CLAIM_BULK_ROWS = 8
    settings.BACKGROUND_SHARE = 25
    background = finished_rows(owner, 20, "old")
    requeue(background)
    batch_create(owner=owner, texts=[f"bulk {i}" for i in range(500)], model_name="sentiment")
    claimed = set()
    for round_ in range(10):
        for i in range(20):  # more interactive texts than a claim takes in a pass
            prediction_create(owner=owner, text=f"single {round_}.{i}", model_name="sentiment")
        claimed.update(row.pk for row in claim(limit=16))
    assert set(background) <= claimed  # 2 a claim: all 20 in 10 claims


def test_reprocess_rate_paces_the_dispatch(owner, monkeypatch):
    ids = finished_rows(owner, 25, "old")
    clock = {"now": 0.0}
    monkeypatch.setattr(reprocess_service.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(reprocess_service.time, "sleep", lambda s: clock.update(now=clock["now"] + s))
    out = io.StringIO()
    call_command("reprocess", "--all", "--rate", "10", stdout=out, stderr=io.StringIO())
    assert Prediction.objects.filter(pk__in=ids, lane=Lane.BACKGROUND, status=PredictionStatus.QUEUED).count() == 25
    # 25 rows at 10 a second: chunks of at most 10, the last one dispatched no earlier than 2 s in.
    assert clock["now"] == pytest.approx(2.0)


def test_reprocess_rate_must_be_positive(owner):
    with pytest.raises(Exception, match="--rate"):
        call_command("reprocess", "--all", "--rate", "0", stdout=io.StringIO(), stderr=io.StringIO())


def test_the_admin_rerun_uses_the_background_lane(owner, staff):
    ids = finished_rows(owner, 3, "old")
    reprocess_service.predictions_rerun(queryset=Prediction.objects.filter(pk__in=ids), user=staff)
    assert set(Prediction.objects.filter(pk__in=ids).values_list("lane", flat=True)) == {Lane.BACKGROUND}


def test_the_background_share_rounds_up(owner, settings):
    settings.CLAIM_BULK_ROWS = 16
    settings.BACKGROUND_SHARE = 10  # 1.6 rows: a share is never rounded down to nothing
    requeue(finished_rows(owner, 10, "old"))
    batch_create(owner=owner, texts=[f"bulk {i}" for i in range(40)], model_name="sentiment")
    assert Counter(row.lane for row in claim()) == {Lane.BULK: 14, Lane.BACKGROUND: 2}


@pytest.mark.parametrize("vendor", ["postgresql", "sqlite"])
def test_a_rerun_s_turns_set_in_its_requeue_statement_are_those_turns_take_gives(owner, vendor, monkeypatch):
    """The re-run sets turns in SQL (services.lanes.turns_by_id); the same rows get the same turns as
    turns_take's, ids with gaps included, and after other background rows already queued. Both ways
    of ranking (PostgreSQL's array_position, the other databases' subquery) run here."""
    from types import SimpleNamespace  # noqa: PLC0415

    from predictions.services import lanes  # noqa: PLC0415

    monkeypatch.setattr(lanes, "connection", SimpleNamespace(vendor=vendor))
    ids = finished_rows(owner, 12, "old")
    Prediction.objects.filter(pk__in=ids[:3]).update(status=PredictionStatus.QUEUED, lane=Lane.BACKGROUND, turn=40)
    chosen = [ids[3], ids[5], ids[6], ids[9], ids[11]]  # not contiguous
    expected = sorted(Prediction.objects.filter(pk__in=chosen), key=lambda row: row.pk)
    turns_take(expected, lane=Lane.BACKGROUND)
    assert [row.turn for row in expected] == [40, 41, 42, 43, 44]  # from the lane's clock, which they share
    Prediction.objects.filter(pk__in=chosen[::-1][:2]).update(turn=turns_by_id(chosen, lane=Lane.BACKGROUND))
    Prediction.objects.filter(pk__in=chosen[:3]).update(turn=turns_by_id(chosen, lane=Lane.BACKGROUND))
    assert dict(Prediction.objects.filter(pk__in=chosen).values_list("pk", "turn")) == {
        row.pk: row.turn for row in expected
    }
    requeue(chosen)  # the reprocess path itself
    assert dict(Prediction.objects.filter(pk__in=chosen).values_list("pk", "turn")) == {
        row.pk: row.turn for row in expected
    }


def test_a_claim_finds_queued_rows_through_the_queued_indexes_however_many_finished_rows_the_table_keeps(owner):
    """The interactive pick, oldest first, once walked the primary key through every finished row when
    none was interactive: 49 ms a claim at 290,000 rows (docs/scaling.md, Past the ceiling). Its plan
    now reads the small partial index of queued rows, whatever the size of the history."""
    from django.db import connection, transaction  # noqa: PLC0415
    from django.test.utils import CaptureQueriesContext  # noqa: PLC0415

    Prediction.objects.bulk_create(  # the history, interactive as most single texts are, and statistics on it
        (
            Prediction(owner=owner, text=f"old {i}", model_name="sentiment", status=PredictionStatus.SUCCEEDED)
            for i in range(20_000)
        ),
        batch_size=5000,
    )
    batch_create(owner=owner, texts=[f"queued {i}" for i in range(300)], model_name="sentiment")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Prediction._meta.db_table}")
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        assert len(claim()) == 128
        transaction.set_rollback(True)
    [statement] = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("WITH urgent")]
    with connection.cursor() as cursor, transaction.atomic():
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}")
        plan = cursor.fetchone()[0][0]["Plan"]
        transaction.set_rollback(True)

    def nodes(node: dict) -> list[dict]:
        return [node, *(child for sub in node.get("Plans", []) for child in nodes(sub))]

    [urgent] = [node for node in nodes(plan) if node.get("Subplan Name") == "CTE urgent"]
    assert {n.get("Index Name") for n in nodes(urgent)} >= {"prediction_queued_id"}
    assert urgent["Shared Hit Blocks"] < 50  # the walk of the primary key read about 800 here
    [rest] = [node for node in nodes(plan) if node.get("Subplan Name") == "CTE rest"]
    assert {n.get("Index Name") for n in nodes(rest)} >= {"prediction_queued_turn"}
