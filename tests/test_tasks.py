"""The run task and the service behind it: idempotent, isolating failures, retrying only transient errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from bench.stack import REAL_SERVICE_VARIABLES, ROOT
from predictions import tasks
from predictions.models import Batch, Lane, Prediction, PredictionStatus
from predictions.registry import classifier_get
from predictions.services import sql, worker
from predictions.tasks import TRANSIENT_ERRORS, predictions_run_task
from textclf import LabelScores

pytestmark = pytest.mark.django_db


def queued(owner, *texts: str, model: str = "sentiment") -> list[Prediction]:
    return [
        Prediction.objects.create(
            owner=owner, text=t, text_sha256="x", model_name=model, status=PredictionStatus.QUEUED
        )
        for t in texts
    ]


def test_a_finished_row_is_never_run_again(owner, monkeypatch):
    [row] = queued(owner, "good film")
    assert worker.predictions_run([row.pk]) == {"succeeded": 1, "failed": 0, "skipped": 0, "batches": 1}
    row.refresh_from_db()
    first = (row.label, row.scores, row.finished_at, row.attempts)
    assert worker.predictions_run([row.pk]) == {"succeeded": 0, "failed": 0, "skipped": 1, "batches": 0}
    row.refresh_from_db()
    assert (row.label, row.scores, row.finished_at, row.attempts) == first


def test_a_row_left_running_by_a_killed_worker_is_taken_again_when_its_message_is_redelivered(owner):
    [row] = queued(owner, "bad plot")
    Prediction.objects.filter(pk=row.pk).update(status=PredictionStatus.RUNNING, attempts=1, task_id="task-a")
    worker.predictions_run([row.pk], task_id="task-a")  # the same message, delivered again
    row.refresh_from_db()
    assert row.status == PredictionStatus.SUCCEEDED
    assert row.attempts == 2


def test_a_row_running_under_another_live_task_is_not_taken(owner):
    [row] = queued(owner, "bad plot")
    Prediction.objects.filter(pk=row.pk).update(status=PredictionStatus.RUNNING, attempts=1, task_id="task-b")
    assert worker.predictions_run([row.pk], task_id="task-a")["skipped"] == 1
    row.refresh_from_db()
    assert row.status == PredictionStatus.RUNNING
    assert row.attempts == 1


def test_a_text_that_breaks_the_model_fails_only_its_own_row(owner, monkeypatch):
    rows = queued(owner, "good film", "POISON", "bad plot")
    classifier = classifier_get("sentiment")
    real_passes = classifier.passes

    def passes(texts, **kwargs):
        if "POISON" in texts:
            raise RuntimeError("the model choked")
        yield from real_passes(texts, **kwargs)

    monkeypatch.setattr(classifier, "passes", passes)
    assert worker.predictions_run([r.pk for r in rows]) == {"succeeded": 2, "failed": 1, "skipped": 0, "batches": 1}
    statuses = {r.text: (r.status, r.error) for r in Prediction.objects.all()}
    assert statuses["good film"] == (PredictionStatus.SUCCEEDED, "")
    assert statuses["bad plot"] == (PredictionStatus.SUCCEEDED, "")
    assert statuses["POISON"] == (PredictionStatus.FAILED, "RuntimeError: the model choked")


def test_a_model_that_cannot_load_fails_its_rows_with_the_reason(owner, settings, tmp_path):
    rows = queued(owner, "a", "b")
    settings.MLSITE_MODELS = {**settings.MLSITE_MODELS, "sentiment": f"path:{tmp_path}"}
    assert worker.predictions_run([r.pk for r in rows])["failed"] == 2
    assert all("could not be loaded" in r.error for r in Prediction.objects.all())


def test_rows_of_several_models_in_one_task_each_get_their_own_model(owner):
    rows = queued(owner, "good", model="sentiment") + queued(owner, "joy", model="emotions")
    worker.predictions_run([r.pk for r in rows])
    by_model = {r.model_name: r for r in Prediction.objects.all()}
    assert set(by_model["sentiment"].scores) == {"negative", "positive"}
    assert set(by_model["emotions"].scores) == {"joy", "anger", "fear", "neutral"}


def test_the_task_is_acked_late_and_requeued_if_its_worker_dies():
    assert predictions_run_task.acks_late is True
    assert predictions_run_task.reject_on_worker_lost is True


def test_transient_database_errors_are_retried_and_others_are_not(owner, monkeypatch, celery_eager):
    assert OperationalError in TRANSIENT_ERRORS
    assert RuntimeError not in TRANSIENT_ERRORS
    calls = []

    def flaky(ids, task_id=""):
        calls.append(ids)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return {"succeeded": 1, "failed": 0, "skipped": 0}

    monkeypatch.setattr(tasks, "predictions_run", flaky)
    monkeypatch.setattr(predictions_run_task, "retry_backoff", False)
    monkeypatch.setattr(predictions_run_task, "default_retry_delay", 0)
    celery_eager.conf.task_eager_propagates = False  # let the eager run retry instead of raising Retry
    result = predictions_run_task.apply(args=[[1]])
    assert result.get() == {"succeeded": 1, "failed": 0, "skipped": 0}
    assert len(calls) == 2

    monkeypatch.setattr(tasks, "predictions_run", lambda ids, task_id="": (_ for _ in ()).throw(ValueError("bug")))
    with pytest.raises(ValueError, match="bug"):
        predictions_run_task.apply(args=[[1]]).get()


@pytest.fixture
def forward_passes(monkeypatch):
    """The texts of each forward pass of the sentiment model, in order."""
    classifier = classifier_get("sentiment")
    real_passes = classifier.passes
    calls: list[list[str]] = []

    def spy(texts, **kwargs):
        for indexes, answers in real_passes(texts, **kwargs):
            calls.append([texts[i] for i in indexes])
            yield indexes, answers

    monkeypatch.setattr(classifier, "passes", spy)
    return calls


def test_texts_of_many_single_requests_share_one_forward_pass(owner, forward_passes):
    rows = queued(owner, *[f"text number {i}" for i in range(10)])  # ten requests, ten messages in flight
    counts = worker.predictions_run([rows[0].pk], task_id="first-message")
    assert counts["succeeded"] == 10
    assert counts["batches"] == 1
    assert len(forward_passes) == 1
    assert sorted(forward_passes[0]) == sorted(r.text for r in rows)
    for row in rows[1:]:  # the other nine messages find their rows done
        assert worker.predictions_run([row.pk], task_id=f"message-{row.pk}")["skipped"] == 1
    assert len(forward_passes) == 1


def test_a_batch_never_exceeds_batch_max_size(owner, forward_passes, settings):
    settings.CLAIM_MAX_ROWS = 4
    settings.CLAIM_WAIT_MS = 0
    rows = queued(owner, *[f"text {i}" for i in range(10)])
    assert worker.predictions_run([rows[0].pk])["batches"] == 3
    assert [len(texts) for texts in forward_passes] == [4, 4, 2]


def test_results_map_back_to_the_right_rows(owner):
    texts = ["good film", "awful boring plot and bad acting", "love", "hate it so much", "the movie"]
    rows = queued(owner, *texts)
    worker.predictions_run([rows[0].pk])
    classifier = classifier_get("sentiment")
    for row in Prediction.objects.all():
        alone = classifier.predict([row.text])[0]
        assert row.scores == pytest.approx(alone.scores, abs=1e-4), row.text
        assert row.label == alone.label


def test_own_rows_come_first_and_others_only_fill_the_batch(owner, settings):
    settings.CLAIM_MAX_ROWS = 2
    settings.CLAIM_LOOP_SECONDS = 0  # one claim only
    settings.CLAIM_WAIT_MS = 0
    older = queued(owner, "older 1", "older 2")
    [mine] = queued(owner, "mine")
    rows = worker.predictions_claim([mine.pk], task_id="t", limit=2, others=True)
    assert {r.pk for r in rows} == {mine.pk, older[0].pk}  # its own row, then the oldest other
    assert Prediction.objects.get(pk=older[1].pk).status == PredictionStatus.QUEUED


def test_reprocess_in_sync_mode_does_not_take_other_requests_rows(owner):
    a, b = queued(owner, "a", "b")
    worker.predictions_run([a.pk], others=False)
    b.refresh_from_db()
    assert b.status == PredictionStatus.QUEUED


def test_a_redelivered_message_reclaims_every_row_its_task_held_not_only_its_own(owner):
    mine, other = queued(owner, "mine", "someone else's")
    Prediction.objects.filter(pk__in=[mine.pk, other.pk]).update(
        status=PredictionStatus.RUNNING, task_id="task-a", attempts=1
    )
    worker.predictions_run([mine.pk], task_id="task-a", others=False)
    assert set(Prediction.objects.values_list("status", flat=True)) == {PredictionStatus.SUCCEEDED}


def test_a_row_whose_worker_died_max_attempts_times_fails_instead_of_killing_the_next_one(owner, settings):
    settings.MAX_ATTEMPTS = 3
    poison, fine = queued(owner, "poison", "fine")
    Prediction.objects.filter(pk=poison.pk).update(status=PredictionStatus.RUNNING, task_id="task-a", attempts=3)
    worker.predictions_run([poison.pk, fine.pk], task_id="task-a")
    poison.refresh_from_db()
    fine.refresh_from_db()
    assert poison.status == PredictionStatus.FAILED
    assert "gave up after 3 attempts" in poison.error
    assert fine.status == PredictionStatus.SUCCEEDED


def test_rows_started_before_are_run_one_by_one(owner, forward_passes):
    a, b, c = queued(owner, "a", "b", "c")
    Prediction.objects.filter(pk__in=[a.pk, b.pk]).update(status=PredictionStatus.RUNNING, task_id="task-a", attempts=1)
    worker.predictions_run([a.pk, b.pk, c.pk], task_id="task-a")
    assert sorted(map(len, forward_passes)) == [1, 1, 1]  # a and b were in a batch that died: alone now


def test_a_slow_worker_never_overwrites_a_row_another_task_took_over(owner, monkeypatch):
    [row] = queued(owner, "good film")
    real_claim = worker.predictions_claim

    def claim_then_lose_it(*args, **kwargs):
        rows = real_claim(*args, **kwargs)
        # While this task computes, the sweeper requeued the row and task-b took it.
        Prediction.objects.filter(pk=row.pk).update(task_id="task-b")
        return rows

    monkeypatch.setattr(worker, "predictions_claim", claim_then_lose_it)
    counts = worker.predictions_run([row.pk], task_id="task-a", others=False)
    row.refresh_from_db()
    assert counts["succeeded"] == 0
    assert row.status == PredictionStatus.RUNNING
    assert row.task_id == "task-b"


def test_own_rows_beyond_batch_max_size_are_all_run(owner, settings):
    settings.CLAIM_MAX_ROWS = 2
    settings.CLAIM_LOOP_SECONDS = 0
    rows = queued(owner, *[f"t{i}" for i in range(5)])
    counts = worker.predictions_run([r.pk for r in rows], task_id="t", others=False)
    assert counts["succeeded"] == 5
    assert counts["batches"] == 3


def test_on_the_embedded_sqlite_default_a_claimed_row_runs_and_is_written(tmp_path):
    """The claim is raw SQL (UPDATE … RETURNING); SQLite hands back naive datetimes, PostgreSQL aware ones.
    The run must cope with both (it once failed every task on SQLite, subtracting the two)."""
    env = {k: v for k, v in os.environ.items() if k not in REAL_SERVICE_VARIABLES}
    env.update(MLSITE_VAR_DIR=str(tmp_path), HF_HUB_OFFLINE="1", LOG_LEVEL="WARNING")
    script = (
        "from django.contrib.auth.models import User\n"
        "from predictions.services import worker\n"
        "from predictions.models import Prediction\n"
        "owner = User.objects.create(username='sqlite')\n"
        "row = Prediction.objects.create(owner=owner, text='good fun', text_sha256='x', model_name='sentiment')\n"
        "print(worker.predictions_run([row.pk], task_id='t', others=False))\n"
        "row.refresh_from_db()\n"
        "print(row.status, row.label, row.finished_at > row.created_at)\n"
    )
    for args in (["migrate", "--noinput", "-v0"], ["shell", "-c", script]):
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "db.sqlite3").is_file()
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == "{'succeeded': 1, 'failed': 0, 'skipped': 0, 'batches': 1}", result.stdout
    assert lines[-1].startswith("succeeded "), result.stdout
    assert lines[-1].endswith(" True"), result.stdout


def test_a_claim_is_one_statement(owner, django_assert_num_queries):
    rows = queued(owner, "good film", "bad plot", "fine acting")
    with django_assert_num_queries(1):
        claimed = worker.predictions_claim([rows[0].pk], task_id="t", limit=2, others=True)
    assert [r.pk for r in claimed] == [rows[0].pk, rows[1].pk]  # own row first, then the oldest other
    assert all(
        r.status == "running" and r.task_id == "t" and r.attempts == 1
        for r in Prediction.objects.filter(pk__in=[rows[0].pk, rows[1].pk])
    )
    assert Prediction.objects.get(pk=rows[2].pk).status == PredictionStatus.QUEUED


def test_a_lone_request_does_not_wait_for_company_but_a_busy_worker_does(owner, settings, monkeypatch):
    settings.CLAIM_WAIT_MS = 1000
    slept = []
    monkeypatch.setattr(worker.time, "sleep", slept.append)
    monkeypatch.setitem(worker._last_pass, "rows", 0)
    [alone] = queued(owner, "good film")
    worker.predictions_run([alone.pk], task_id="a")
    assert slept == []  # nobody else queued, nothing a moment ago: no CLAIM_WAIT_MS
    pair = queued(owner, "bad plot", "fine acting")
    worker.predictions_run([pair[0].pk], task_id="b")
    assert slept == [1.0]  # its claim had company: it waited once for more
    # A lone request a moment after that pass of two waits too: the worker is busy. (The task's last,
    # empty claim must not make the process forget the pass it ran.)
    [next_one] = queued(owner, "dull story")
    worker.predictions_run([next_one.pk], task_id="c")
    assert slept == [1.0, 1.0]


def test_results_are_stored_in_one_statement_with_their_types(owner, django_assert_max_num_queries):
    """The result write is one UPDATE for the whole pass; scores and labels are stored as JSON
    values (not strings), a failed row has no score, and every field reads back as written."""
    rows = queued(owner, "good film", "bad film", "so-so film")
    claimed = worker.predictions_claim([r.pk for r in rows], task_id="t-store", limit=10, others=False)
    results = [
        LabelScores(label="positive", score=0.75, scores={"negative": 0.25, "positive": 0.75}, labels=["positive"]),
        ValueError("broken text"),
        LabelScores(label="negative", score=0.5, scores={"negative": 0.5, "positive": 0.5}, labels=None),
    ]
    finished = timezone.now().replace(microsecond=0)
    for row, result in zip(claimed, results, strict=True):
        worker._row_fill(row, result, version="v1", finished=finished)
    with django_assert_max_num_queries(1 if connection.vendor == "postgresql" else 4):
        held = sql.results_store(claimed, task_id="t-store")
    assert held == {r.pk for r in rows}
    good, bad, middling = (Prediction.objects.get(pk=r.pk) for r in rows)
    assert (good.status, good.label, good.score, good.scores, good.labels, good.model_version) == (
        PredictionStatus.SUCCEEDED,
        "positive",
        0.75,
        {"negative": 0.25, "positive": 0.75},
        ["positive"],
        "v1",
    )
    assert (bad.status, bad.score, bad.scores, bad.labels, bad.error) == (
        PredictionStatus.FAILED,
        None,
        None,
        None,
        "ValueError: broken text",
    )
    assert middling.labels is None
    assert middling.finished_at == good.finished_at == finished
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT jsonb_typeof(scores), jsonb_typeof(labels) FROM predictions_prediction WHERE id = %s", [good.pk]
            )
            assert cursor.fetchone() == ("object", "array")


def test_a_single_text_task_takes_other_queued_rows_along_batch_rows_included(owner):
    """Rows whose message waits behind others in the broker (a backlog after a burst) are run by
    whichever task claims first, in the same forward pass."""
    lone, _other = queued(owner, "a lone text", "another lone text")
    batch = Batch.objects.create(owner=owner, model_name="sentiment", size=2)
    for i in range(2):
        Prediction.objects.create(
            owner=owner, batch=batch, position=i, text=f"batch text {i}", text_sha256="x", model_name="sentiment"
        )
    counts = worker.predictions_run([lone.pk], task_id="single-task")
    assert counts == {"succeeded": 4, "failed": 0, "skipped": 0, "batches": 1}
    assert not Prediction.objects.exclude(status=PredictionStatus.SUCCEEDED).exists()


def test_a_chunk_claims_a_single_text_queued_meanwhile_and_runs_it_first(owner, settings, monkeypatch):
    settings.PASS_MAX_TEXTS = settings.CLAIM_BULK_ROWS = 2
    own = queued(owner, "first of the chunk", "second of the chunk")
    Prediction.objects.filter(pk__in=[r.pk for r in own]).update(lane=Lane.BULK)
    [single] = queued(owner, "a single text queued meanwhile")
    passes = []
    run = worker._rows_run
    monkeypatch.setattr(
        worker, "_rows_run", lambda name, rows, **kw: passes.append([r.pk for r in rows]) or run(name, rows, **kw)
    )
    worker.predictions_run([r.pk for r in own], task_id="chunk")
    assert passes == [[single.pk], [own[0].pk, own[1].pk]]  # the interactive lane's pass, then the chunk's


def test_a_bulk_claim_runs_a_single_text_queued_during_it_between_two_forward_passes(
    owner, settings, forward_passes, monkeypatch
):
    """A claim of many bulk rows runs in several passes; a single text that arrives during the
    first one is claimed and run before the second, not after the whole claim."""
    settings.PASS_MAX_TEXTS, settings.CLAIM_WAIT_MS = 2, 0
    bulk_texts = [f"bulk text {i}" for i in range(6)]
    bulk = queued(owner, *bulk_texts)
    Prediction.objects.filter(pk__in=[r.pk for r in bulk]).update(lane=Lane.BULK)
    arrived = []
    real_claim = worker.predictions_claim

    def claim(*args, **kwargs):
        if forward_passes and not arrived:  # the first pass ran: a client sends a single text
            arrived.extend(queued(owner, "a single text sent meanwhile"))
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(worker, "predictions_claim", claim)
    counts = worker.predictions_run([r.pk for r in bulk], task_id="chunk")
    assert counts["succeeded"] == 7
    assert forward_passes[1] == ["a single text sent meanwhile"]  # right after the bulk claim's first pass
    assert sorted(text for texts in [forward_passes[0], *forward_passes[2:]] for text in texts) == bulk_texts
    assert len(forward_passes) == 4
    [single] = arrived
    single.refresh_from_db()
    assert single.status == PredictionStatus.SUCCEEDED
    assert single.task_id == "chunk"
    assert single.finished_at < min(
        Prediction.objects.filter(pk__in=[r.pk for r in bulk]).values_list("finished_at", flat=True)
    )


@pytest.mark.parametrize(
    ("mixed", "yield_layers", "expected"), [(2, False, [4, 1, 2, 2]), (0, False, [4, 1, 4]), (2, True, [4, 1, 4])]
)
def test_bulk_passes_are_shorter_once_a_single_text_has_run(
    owner, settings, forward_passes, monkeypatch, mixed, yield_layers, expected
):
    """A bulk claim's passes have PASS_MAX_TEXTS texts; once a single text has run between two of
    them, the rest have PASS_MAX_TEXTS_MIXED (0: unchanged), so the next single text waits less.
    Passes that yield between their layers (PASS_YIELD_LAYERS) keep their size: a single text
    waits for one layer."""
    settings.PASS_MAX_TEXTS, settings.PASS_MAX_TEXTS_MIXED, settings.CLAIM_WAIT_MS = 4, mixed, 0
    settings.PASS_YIELD_LAYERS = yield_layers
    bulk = queued(owner, *[f"bulk text {i}" for i in range(8)])
    Prediction.objects.filter(pk__in=[r.pk for r in bulk]).update(lane=Lane.BULK)
    arrived = []
    real_claim = worker.predictions_claim

    def claim(*args, **kwargs):
        if forward_passes and not arrived:
            arrived.extend(queued(owner, "a single text sent meanwhile"))
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(worker, "predictions_claim", claim)
    assert worker.predictions_run([r.pk for r in bulk], task_id="chunk")["succeeded"] == 9
    assert [len(texts) for texts in forward_passes] == expected
    assert forward_passes[1] == ["a single text sent meanwhile"]


def test_bulk_passes_keep_their_size_when_no_single_text_ran_lately(owner, settings, forward_passes):
    settings.PASS_MAX_TEXTS, settings.PASS_MAX_TEXTS_MIXED, settings.CLAIM_WAIT_MS = 4, 2, 0
    settings.PASS_YIELD_LAYERS = False
    bulk = queued(owner, *[f"bulk text {i}" for i in range(8)])
    Prediction.objects.filter(pk__in=[r.pk for r in bulk]).update(lane=Lane.BULK)
    [single] = queued(owner, "a single text an hour ago")
    worker.predictions_run([single.pk], task_id="single", others=False)
    assert worker.bulk_pass_size() == 2
    worker._interactive_ran["at"] -= worker.MIXED_SECONDS  # as if it ran a second ago, none since
    assert worker.bulk_pass_size() == 4
    worker.predictions_run([r.pk for r in bulk], task_id="chunk")
    assert [len(texts) for texts in forward_passes] == [1, 4, 4]


def test_between_passes_a_worker_takes_only_interactive_rows(owner, settings):
    settings.CLAIM_WAIT_MS = 0
    [bulk] = queued(owner, "a bulk text")
    [background] = queued(owner, "a background text")
    [single] = queued(owner, "a single text")
    Prediction.objects.filter(pk=bulk.pk).update(lane=Lane.BULK)
    Prediction.objects.filter(pk=background.pk).update(lane=Lane.BACKGROUND)
    taken = worker.predictions_claim([], task_id="t", limit=8, others=True, interactive_only=True)
    assert [r.pk for r in taken] == [single.pk]
    assert set(Prediction.objects.filter(status=PredictionStatus.QUEUED).values_list("pk", flat=True)) == {
        bulk.pk,
        background.pk,
    }
