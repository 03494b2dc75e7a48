"""Telling a waiting request that its prediction finished, without holding a worker.

With Redis (REDIS_URL), the worker publishes the ids of the rows it just wrote on one channel, once
per batch, with the result fields it committed to each row it held. Each web process's subscriber
thread (predictions.pubsub) wakes the requests waiting for those ids and hands each its row's fields:
a waiting request costs no Redis round trip of its own, wakes as soon as its row is written, and
answers without reading the row again. Without Redis, or while the subscriber is not connected, a
waiting request polls the row. A message without fields for a row (one that came before the request
waited, or from an older worker) makes the request read its row, and the row is read every second
(or sooner when polling) in case a message is lost.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

from predictions import pubsub

CHANNEL = "mlsite:predictions-finished"
RECENT_IDS = 10_000  # ids finished lately, so a request that registers just after its message still sees it
RECHECK_SECONDS = 1.0  # a woken-or-not waiter reads its row at least this often


def predictions_finished_notify(
    ids: Sequence[int], batch_ids: Iterable[int] = (), finished: Mapping[int, dict] | None = None
) -> None:
    """One message for the whole forward pass, JSON: the row ids, the API batches (POST /batches/)
    the rows belong to, and `finished`: for rows this pass wrote, the fields a waiting request
    answers with (services.waiting.finished_fields)."""
    if not ids:
        return
    message = {
        "ids": list(ids),
        "batches": sorted(set(batch_ids)),
        "rows": {str(k): v for k, v in (finished or {}).items()},
    }
    pubsub.publish(CHANNEL, json.dumps(message, separators=(",", ":")))


class Waiter(threading.Event):
    """Set when the row (or batch) it waits for was written; `fields`: what the message said of it."""

    fields: dict | None = None


def _parse(data: bytes) -> tuple[list[int], list[int], dict]:
    """(row ids, batch ids, fields by row id) of a message; an older worker's is `1,2,b7` (no fields)."""
    if data[:1] == b"{":
        message = json.loads(data)
        rows = message.get("rows") or {}
        if not isinstance(rows, dict):
            raise ValueError("rows is not an object")
        return [int(pk) for pk in message["ids"]], [int(pk) for pk in message["batches"]], rows
    parts = [part.strip() for part in data.split(b",")]
    ids = [int(part) for part in parts if part.isdigit()]
    return ids, [int(part[1:]) for part in parts if part[:1] == b"b" and part[1:].isdigit()], {}


class WaiterBoard:
    """The requests of this process waiting for a row (its id) or a batch (("batch", id))."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiters: dict[int | tuple[str, int], list[Waiter]] = {}
        self.recent: OrderedDict[int, None] = OrderedDict()

    def register(self, pk: int | tuple[str, int]) -> Waiter:
        event = Waiter()
        with self.lock:
            if pk in self.recent:
                event.set()
            else:
                self.waiters.setdefault(pk, []).append(event)
        return event

    def unregister(self, pk: int | tuple[str, int], event: Waiter) -> None:
        with self.lock:
            events = self.waiters.get(pk, [])
            if event in events:
                events.remove(event)
            if not events:
                self.waiters.pop(pk, None)

    def deliver(self, data: bytes) -> None:
        """The pub/sub handler of CHANNEL: wake the waiters of the rows and batches a message names."""
        ids, batch_ids, fields = _parse(data)
        with self.lock:
            for batch_id in batch_ids:  # a batch has one message per forward pass: never "recent", always re-checked
                for event in self.waiters.pop(("batch", batch_id), ()):
                    event.set()
            for pk in ids:
                self.recent[pk] = None
                row = fields.get(str(pk))
                for event in self.waiters.pop(pk, ()):
                    event.fields = row if isinstance(row, dict) else None
                    event.set()
            while len(self.recent) > RECENT_IDS:
                self.recent.popitem(last=False)


board = WaiterBoard()


def finished_wait(
    pk: int,
    *,
    timeout: float,
    is_finished: Callable[[], bool],
    finished_from: Callable[[dict], bool] | None = None,
) -> bool:
    """Block up to `timeout` seconds until `is_finished()`; True if it finished in time.

    `is_finished` reads the row: it is called when the notification arrives, at least every
    RECHECK_SECONDS while none does, and more often while the subscriber is not connected. When the
    notification carries the row's fields, `finished_from(fields)` takes them instead of a read
    (True: finished).
    """
    deadline = time.monotonic() + timeout
    current = pubsub.subscriber()
    if current is None:
        return _wait_poll(deadline, is_finished)
    event = board.register(pk)
    try:
        delay = 0.01
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return is_finished()
            if current.subscribed.is_set():
                woken = event.wait(min(remaining, RECHECK_SECONDS))
            else:  # not (yet) subscribed: a notification could be missed, so poll
                woken = event.wait(min(remaining, delay))
                delay = min(delay * 1.5, 0.1)
            if woken and event.fields is not None and finished_from is not None and finished_from(event.fields):
                return True
            if is_finished():
                return True
            if woken:  # notified, yet the row says otherwise (a stale message): poll the rest of the time
                return _wait_poll(deadline, is_finished)
    finally:
        board.unregister(pk, event)


def batch_finished_wait(batch_id: int, *, timeout: float, is_finished: Callable[[], bool]) -> bool:
    """Block up to `timeout` seconds until every row of an API batch is finished; True if it did.

    The batch has a message per forward pass that wrote some of its rows: each one (or
    RECHECK_SECONDS without one) makes `is_finished()` run again; registered before each check,
    so a message that comes in between is not missed.
    """
    deadline = time.monotonic() + timeout
    current = pubsub.subscriber()
    if current is None:
        return _wait_poll(deadline, is_finished)
    key = ("batch", batch_id)
    while True:
        event = board.register(key)
        try:
            if is_finished():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            event.wait(min(remaining, RECHECK_SECONDS if current.subscribed.is_set() else 0.1))
        finally:
            board.unregister(key, event)


def _wait_poll(deadline: float, is_finished: Callable[[], bool]) -> bool:
    delay = 0.01
    while not is_finished():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.1)
    return True
