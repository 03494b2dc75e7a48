"""One wake-up message per burst of single predictions (predictions/services/dispatch.py), on the real Redis.

The API publishes a run task only when no wake-up is pending; a run task that claims other rows
clears the pending mark before its first claim. Whatever path breaks that errs towards publishing.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from predictions.models import Prediction
from predictions.pubsub import redis_client
from predictions.services import worker
from predictions.services.dispatch import _wakeup_key, model_queue
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
