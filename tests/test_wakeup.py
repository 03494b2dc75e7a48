"""One wake-up message per burst of single predictions (predictions/services/dispatch.py), on the real Redis.

The API publishes a run task only when no wake-up is pending; a run task that claims other rows
clears the pending mark before its first claim. Whatever path breaks that errs towards publishing.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
from django.db import OperationalError

from predictions.memos import memos_forget
from predictions.models import Lane, Prediction
from predictions.pubsub import redis_client
from predictions.registry import classifier_get
from predictions.services import worker
from predictions.services.dispatch import _interactive_key, _wakeup_key, interactive_queued_take, model_queue
from predictions.tasks import predictions_run_task

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (make test sets it)"),
]


@pytest.fixture(autouse=True)
def long_mark(settings):
    """A mark that outlives any test's submissions, however slow the machine: expiry is simulated."""
    settings.WAKEUP_COALESCE_MS = 60_000


@pytest.fixture
def held(monkeypatch):
    """Every publish is recorded and not run: its message waits, as while the workers are busy."""
    sent: list[list[int]] = []
    monkeypatch.setattr(
        predictions_run_task,
        "apply_async",
        lambda args=(), task_id=None, **_: sent.append(list(args[0])) or SimpleNamespace(id=task_id),
    )
    return sent


def redis():
    return redis_client()


def _key(model_name: str) -> str:
    return _wakeup_key(model_queue(model_name))


def post(api, n: int, prefix: str = "text") -> list[int]:
    ids = []
    for i in range(n):
        response = api.post("/api/v1/predictions/", {"text": f"{prefix} {i}"})
        assert response.status_code == 202, response.json()
        ids.append(response.json()["id"])
    return ids


def test_submissions_while_a_wake_up_is_pending_send_nothing_and_its_task_runs_them_all(api, held):
    ids = post(api, 6)
    assert held == [[ids[0]]]  # one message for six requests
    assert 0 < redis().pttl(_key("sentiment")) <= 60_000
    counts = worker.predictions_run(held[0], task_id="the-pending-one")  # the worker takes the message
    assert counts["succeeded"] == 6
    assert all(p.status == "succeeded" for p in Prediction.objects.filter(pk__in=ids))
    assert not redis().exists(_key("sentiment"))  # the task cleared it before claiming
    later = post(api, 2, prefix="later")
    assert held[1:] == [[later[0]]]  # the next burst publishes again, once


def test_the_mark_is_cleared_before_the_first_claim_so_a_row_committed_after_it_publishes(api, held, monkeypatch):
    """The order the guarantee rests on: clear, then claim. A submission that lands between the two
    finds no mark and publishes, even though the claim then takes its row too."""
    post(api, 1)
    real_claim = worker.predictions_claim
    between = []

    def claim(*args, **kwargs):
        if not between:
            assert not redis().exists(_key("sentiment"))
            between.extend(post(api, 1, prefix="between"))
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(worker, "predictions_claim", claim)
    worker.predictions_run(held[0], task_id="t")
    assert held[1] == between


def test_a_failed_publish_clears_the_mark_and_leaves_the_row_to_the_sweeper(api, monkeypatch):
    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(predictions_run_task, "apply_async", broker_down)
    [first] = post(api, 1)
    assert Prediction.objects.get(pk=first).published_at is None
    assert not redis().exists(_key("sentiment"))


def test_with_redis_down_or_coalescing_off_every_submission_publishes(api, held, settings):
    settings.WAKEUP_COALESCE_MS = 0
    assert len(post(api, 3)) == len(held) == 3
    settings.WAKEUP_COALESCE_MS = 1000
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    assert len(post(api, 3, prefix="down")) == 3
    assert len(held) == 6


def test_a_mark_whose_task_never_came_expires(api, held, settings):
    post(api, 2)
    assert len(held) == 1
    redis().pexpire(_key("sentiment"), 1)  # as WAKEUP_COALESCE_MS would, later
    time.sleep(0.05)
    post(api, 1, prefix="after")
    assert len(held) == 2


def test_a_worker_clears_the_mark_whatever_its_own_coalescing_setting(api, held, settings):
    post(api, 1)
    settings.WAKEUP_COALESCE_MS = 0  # the worker's setting may differ from the web's
    worker.predictions_run(held[0], task_id="t")
    assert not redis().exists(_key("sentiment"))


def test_with_one_text_per_pass_the_pending_task_still_clears_the_mark_and_takes_the_burst(api, held, settings):
    """PASS_MAX_TEXTS=1: one text a pass; the task must still clear the mark first and run the
    whole burst before it returns."""
    settings.PASS_MAX_TEXTS = 1
    ids = post(api, 4)
    assert held == [[ids[0]]]
    worker.predictions_run(held[0], task_id="t")
    assert not redis().exists(_key("sentiment"))
    assert all(p.status == "succeeded" for p in Prediction.objects.filter(pk__in=ids))


def test_a_task_whose_own_rows_are_gone_still_claims_the_coalesced_ones(api, held, settings):
    settings.PASS_MAX_TEXTS = 1  # one text a pass
    ids = post(api, 3)
    Prediction.objects.filter(pk=ids[0]).update(status="succeeded")  # another task ran it meanwhile
    counts = worker.predictions_run(held[0], task_id="t")
    assert counts["skipped"] == 1
    assert counts["succeeded"] == 2


def test_a_task_stopped_by_batch_loop_seconds_with_rows_queued_sends_a_wake_up(owner, settings, monkeypatch):
    settings.CLAIM_LOOP_SECONDS = 0
    settings.CLAIM_MAX_ROWS = 2
    rows = [
        Prediction.objects.create(owner=owner, text=f"queued {i}", text_sha256="x", model_name="sentiment")
        for i in range(5)
    ]
    sent = []
    real = predictions_run_task.apply_async

    def spy(*args, **kwargs):  # recorded, and run (eagerly), as a worker would take it
        sent.append(kwargs["args"])
        return real(*args, **kwargs)

    monkeypatch.setattr(predictions_run_task, "apply_async", spy)
    worker.predictions_run([rows[0].pk], task_id="first")
    assert sent
    assert all(args == [[]] for args in sent)
    assert all(row.status == "succeeded" for row in Prediction.objects.filter(pk__in=[r.pk for r in rows]))


# A single text posted while a worker is in the middle of a bulk pass (docs/architecture.md, Lanes).


def _interactive_mark(model_name: str) -> str:
    return _interactive_key(model_queue(model_name))


def _bulk(owner, n: int) -> list[Prediction]:
    return [
        Prediction.objects.create(
            owner=owner, text=f"bulk text {i}", text_sha256="x", model_name="sentiment", lane=Lane.BULK
        )
        for i in range(n)
    ]


@pytest.fixture
def first_layer_done(monkeypatch):
    """Calls the function it is given once the sentiment model's first encoder layer has run in a pass."""
    classifier = classifier_get("sentiment")
    assert classifier.yields_between_layers
    [dense] = [m for name, m in classifier.network.named_modules() if name.endswith("layer.0.output.dense")]
    todo: list = []

    def hook(*_):
        while todo:
            todo.pop()()

    handle = dense.register_forward_hook(hook)
    yield todo.append
    handle.remove()


@pytest.mark.parametrize("yield_layers", [True, False])
def test_a_single_text_posted_during_a_bulk_pass_runs_between_its_layers(
    api, held, owner, settings, first_layer_done, yield_layers
):
    """With PASS_YIELD_LAYERS, the single text is run (by the same task, its own pass) before the bulk
    pass it arrived in has finished; without, after it. The bulk pass's answers do not change."""
    settings.PASS_MAX_TEXTS, settings.PASS_MAX_TEXTS_MIXED, settings.CLAIM_WAIT_MS = 8, 0, 0
    settings.PASS_YIELD_LAYERS = yield_layers
    bulk = _bulk(owner, 8)
    single = []
    first_layer_done(lambda: single.extend(post(api, 1, prefix="a single text")))
    counts = worker.predictions_run([r.pk for r in bulk], task_id="chunk")
    assert counts["succeeded"] == 9
    [row] = Prediction.objects.filter(pk__in=single)
    bulk_finished = set(Prediction.objects.filter(pk__in=[r.pk for r in bulk]).values_list("finished_at", flat=True))
    assert len(bulk_finished) == 1  # one pass, one write
    assert (row.finished_at < min(bulk_finished)) is yield_layers
    assert row.task_id == "chunk"  # not left to its own message, which waits in the broker
    assert redis().exists(_interactive_mark("sentiment")) != yield_layers  # taken only by a yielding pass
    expected = classifier_get("sentiment").predict([r.text for r in bulk])
    stored = Prediction.objects.filter(pk__in=[r.pk for r in bulk]).order_by("pk")
    for prediction, answer in zip(stored, expected, strict=True):
        assert prediction.label == answer.label
        assert prediction.scores == pytest.approx(answer.scores, abs=1e-5)


def test_without_a_mark_a_bulk_pass_claims_nothing_between_its_layers(owner, settings, monkeypatch):
    """The mark is what spares the SQL claim: a pass looks at Redis between its layers, and claims
    only when a single text was posted."""
    settings.PASS_MAX_TEXTS, settings.PASS_MAX_TEXTS_MIXED, settings.CLAIM_WAIT_MS = 8, 0, 0
    settings.PASS_YIELD_LAYERS = True
    redis().delete(_interactive_mark("sentiment"))
    bulk = _bulk(owner, 8)
    claims = []
    real_claim = worker.predictions_claim
    monkeypatch.setattr(worker, "predictions_claim", lambda *a, **k: claims.append(k) or real_claim(*a, **k))
    assert worker.predictions_run([r.pk for r in bulk], task_id="chunk")["succeeded"] == 8
    assert not [k for k in claims if k.get("interactive_only")]


def _marked_during_yielding_bulk(owner, settings, monkeypatch, *, before_interactive_claim) -> list[Prediction]:
    """Eight queued bulk rows for passes that yield between layers, a single text marked as posted,
    and `before_interactive_claim()` run before each interactive-only claim."""
    settings.PASS_MAX_TEXTS, settings.PASS_MAX_TEXTS_MIXED, settings.CLAIM_WAIT_MS = 8, 0, 0
    settings.PASS_YIELD_LAYERS = True
    real_claim = worker.predictions_claim

    def claim(*args, **kwargs):
        if kwargs.get("interactive_only"):
            before_interactive_claim()
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(worker, "predictions_claim", claim)
    redis().set(_interactive_mark("sentiment"), b"1")
    return _bulk(owner, 8)


def test_a_claim_that_fails_between_layers_fails_the_task_not_the_bulk_pass(owner, settings, monkeypatch):
    """An error of the claim between two layers is raised once the pass is done, as one between two
    passes is: the pass is not taken for failed (its texts are not retried one by one), and its rows
    stay running under the task, for the sweeper."""

    def database_gone() -> None:
        raise OperationalError("the database went away")

    bulk = _marked_during_yielding_bulk(owner, settings, monkeypatch, before_interactive_claim=database_gone)
    classifier = classifier_get("sentiment")
    one_by_one = []
    monkeypatch.setattr(worker, "_text_run", lambda *a: one_by_one.append(a) or classifier.predict([a[1]])[0])
    with pytest.raises(OperationalError):
        worker.predictions_run([r.pk for r in bulk], task_id="chunk")
    assert one_by_one == []
    assert set(Prediction.objects.filter(pk__in=[r.pk for r in bulk]).values_list("status", "task_id")) == {
        ("running", "chunk")
    }


def test_the_time_taken_between_layers_is_not_counted_in_the_bulk_pass_s_logged_seconds(
    api, owner, settings, monkeypatch, caplog
):
    """The pass's logged seconds (and its forward-pass metric) are its own: the nested claim, here
    made to take a second, is taken out of them."""
    bulk = _marked_during_yielding_bulk(owner, settings, monkeypatch, before_interactive_claim=lambda: time.sleep(1.0))
    started = time.monotonic()
    with caplog.at_level("INFO", logger=worker.logger.name):
        assert worker.predictions_run([r.pk for r in bulk], task_id="chunk")["succeeded"] == 8
    assert time.monotonic() - started >= 1.0  # the nested claim ran inside the task
    [bulk_pass] = [r for r in caplog.records if r.msg.startswith("forward pass of") and r.args[0] == 8]
    assert bulk_pass.seconds < 1.0


def test_with_redis_failing_the_mark_is_not_read_again_for_a_while(settings):
    redis().set(_interactive_mark("sentiment"), b"1")
    real_url = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    assert not interactive_queued_take(["sentiment"])
    settings.REDIS_URL = real_url
    assert not interactive_queued_take(["sentiment"])  # not tried: each layer of each pass would wait on it
    assert redis().exists(_interactive_mark("sentiment"))
    memos_forget()
    assert interactive_queued_take(["sentiment"])
    assert not interactive_queued_take(["sentiment"])  # taken: the next look finds none
