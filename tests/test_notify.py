"""Waking a waiting request (?wait=N) through Redis pub/sub, and polling when Redis is not there."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
import redis
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from predictions import notify, pubsub
from predictions.api.serializers import PredictionSerializer
from predictions.models import Prediction, PredictionStatus
from predictions.services import submission, waiting, worker

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs a real Redis (make test sets REDIS_URL)")


class Row:
    """Stands for the prediction row: `finished` flips when the 'worker' writes it; reads are counted."""

    def __init__(self) -> None:
        self.finished = False
        self.reads = 0

    def is_finished(self) -> bool:
        self.reads += 1
        return self.finished


def finish_later(row: Row, pk: int, after: float) -> threading.Thread:
    def run() -> None:
        time.sleep(after)
        row.finished = True
        notify.predictions_finished_notify([pk - 1, pk, pk + 1])  # one message for the whole batch

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture
def listener(settings):
    settings.REDIS_URL = os.environ["REDIS_URL"]
    current = pubsub.subscriber()
    assert current.subscribed.wait(5), "the subscriber did not subscribe to Redis"
    return notify.board


def test_a_waiting_request_wakes_on_the_notification_not_by_polling(listener):
    row = Row()
    pk = 10_000_000 + os.getpid()
    began = time.monotonic()
    thread = finish_later(row, pk, after=0.3)
    assert notify.finished_wait(pk, timeout=10, is_finished=row.is_finished)
    elapsed = time.monotonic() - began
    thread.join()
    # Without the notification the row would only be read again after RECHECK_SECONDS.
    assert elapsed < notify.RECHECK_SECONDS * 0.9, elapsed
    assert row.reads == 1  # read once, when woken
    assert pk not in listener.waiters  # nothing left behind


def test_a_notification_that_came_before_the_request_waited_is_not_missed(listener):
    row = Row()
    pk = 20_000_000 + os.getpid()
    finish_later(row, pk, after=0).join()
    deadline = time.monotonic() + 5
    while pk not in listener.recent and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    assert notify.finished_wait(pk, timeout=10, is_finished=row.is_finished)
    assert time.monotonic() - began < 0.5


def test_a_wait_times_out_when_the_row_never_finishes(listener):
    row = Row()
    began = time.monotonic()
    assert not notify.finished_wait(30_000_000 + os.getpid(), timeout=0.3, is_finished=row.is_finished)
    assert 0.3 <= time.monotonic() - began < 2


def test_without_a_reachable_redis_the_request_polls_the_row(settings):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    row = Row()
    threading.Timer(0.3, lambda: setattr(row, "finished", True)).start()
    began = time.monotonic()
    assert notify.finished_wait(1, timeout=10, is_finished=row.is_finished)
    assert time.monotonic() - began < 1.5
    assert row.reads > 2  # it polled
    assert not pubsub.subscriber().subscribed.is_set()


def test_a_batch_waiter_wakes_on_each_forward_pass_of_its_batch(listener):
    """A batch is finished by several forward passes: the waiter re-checks on each message naming
    the batch, and returns on the one that finishes it, not after RECHECK_SECONDS."""
    batch_id = 40_000_000 + os.getpid()
    passes_left = [2]
    checks = []

    def is_finished() -> bool:
        checks.append(time.monotonic())
        return passes_left[0] == 0

    def worker() -> None:
        for pk in (1, 2):
            time.sleep(0.2)
            passes_left[0] -= 1
            notify.predictions_finished_notify([pk], batch_ids=[batch_id, batch_id])

    thread = threading.Thread(target=worker)
    began = time.monotonic()
    thread.start()
    assert notify.batch_finished_wait(batch_id, timeout=10, is_finished=is_finished)
    elapsed = time.monotonic() - began
    thread.join()
    assert elapsed < notify.RECHECK_SECONDS * 0.9, elapsed
    assert len(checks) == 3  # before waiting, then once per message
    assert ("batch", batch_id) not in listener.waiters
    assert ("batch", batch_id) not in listener.recent


def test_a_batch_wait_times_out_when_the_batch_never_finishes(listener):
    began = time.monotonic()
    assert not notify.batch_finished_wait(50_000_000 + os.getpid(), timeout=0.3, is_finished=lambda: False)
    assert 0.3 <= time.monotonic() - began < 2


def test_the_message_carries_the_row_s_fields_and_the_waiter_takes_them_without_a_read(listener):
    row = Row()
    pk = 60_000_000 + os.getpid()
    taken = []

    def finished_from(fields: dict) -> bool:
        taken.append(fields)
        return True

    def run() -> None:
        time.sleep(0.2)
        notify.predictions_finished_notify([pk, pk + 1], finished={pk: {"status": "succeeded", "label": "positive"}})

    thread = threading.Thread(target=run)
    thread.start()
    assert notify.finished_wait(pk, timeout=10, is_finished=row.is_finished, finished_from=finished_from)
    thread.join()
    assert taken == [{"status": "succeeded", "label": "positive"}]
    assert row.reads == 0


def test_a_message_without_fields_or_from_an_older_worker_makes_the_waiter_read_its_row(listener):
    publisher = redis.Redis.from_url(os.environ["REDIS_URL"])
    cases = [
        (None, False),
        ("{pk},{other},b7", False),
        ("{{not json", True),
        ('{{"rows": {{}}}}', True),
        ('{{"ids": [{pk}], "batches": [], "rows": [1]}}', True),
        ('{{"ids": [{pk}], "batches": [], "rows": {{"{pk}": 5}}}}', False),
    ]
    for n, (message, malformed) in enumerate(cases):
        row = Row()
        pk = 70_000_000 + os.getpid() * 100 + n * 10  # its neighbour pk + 1 is no other case's

        def run(message=message, malformed=malformed, pk=pk, row=row) -> None:
            time.sleep(0.2)
            row.finished = True
            if message is None:  # this pass did not hold the row: its id, no fields
                notify.predictions_finished_notify([pk], finished={pk + 1: {"status": "succeeded"}})
            else:
                publisher.publish(notify.CHANNEL, message.format(pk=pk, other=pk + 1))
                if malformed:  # ignored: the listener lives on for the next message
                    notify.predictions_finished_notify([pk])

        thread = threading.Thread(target=run)
        began = time.monotonic()
        thread.start()
        assert notify.finished_wait(pk, timeout=10, is_finished=row.is_finished, finished_from=lambda f: True)
        thread.join()
        assert time.monotonic() - began < notify.RECHECK_SECONDS * 0.9, message
        assert row.reads == 1, message


@pytest.mark.django_db(transaction=True)
def test_a_waiting_request_answers_from_the_message_exactly_what_the_row_holds(listener, owner, monkeypatch):
    """The worker's real write path wakes the request; the request reads nothing, and its answer is
    the JSON a later GET of the row gives."""
    monkeypatch.setattr(submission, "prediction_publish", lambda prediction: None)  # the "worker" is a thread here
    texts = ["a gorgeous, witty film", "dull"]
    predictions = [submission.prediction_create(owner=owner, text=t, model_name="sentiment") for t in texts]

    def run_in_a_thread() -> None:
        time.sleep(0.3)
        try:
            worker.predictions_run([p.pk for p in predictions], task_id="")
        finally:
            connections.close_all()

    thread = threading.Thread(target=run_in_a_thread)
    thread.start()
    with CaptureQueriesContext(connection) as queries:
        waited = waiting.prediction_wait(predictions[0], timeout=10)
    thread.join()
    assert waited.status == PredictionStatus.SUCCEEDED, [q["sql"] for q in queries]
    assert len(queries) == 0, [q["sql"] for q in queries]
    stored = Prediction.objects.get(pk=waited.pk)
    assert PredictionSerializer(waited).data == PredictionSerializer(stored).data
    assert waited.score == stored.score
    assert waited.scores == stored.scores  # the same floats, not approximately
