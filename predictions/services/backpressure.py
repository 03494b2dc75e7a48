"""MAX_QUEUED: a submission that would put too many predictions in flight is refused, storing nothing."""

from __future__ import annotations

import threading
import time

from django.conf import settings

from mlsite.fastpaths import fast_path
from predictions.memos import memo
from predictions.selectors import predictions_in_flight_count

QUEUE_DEPTH_REFRESH_SECONDS = 1.0


class QueueFull(Exception):
    """Accepting the submission would put more than MAX_QUEUED predictions in flight."""

    def __init__(self, *, in_flight: int, adding: int, limit: int) -> None:
        super().__init__(
            f"The queue is full: {in_flight} predictions are queued or running and {adding} more would pass "
            f"the limit of {limit} (MAX_QUEUED). Nothing was stored; retry later."
        )
        self.in_flight, self.adding, self.limit = in_flight, adding, limit


class QueueDepth:
    """Predictions in flight as this process last counted them, plus what it admitted since.

    The COUNT runs at most once per QUEUE_DEPTH_REFRESH_SECONDS per process, so a submission
    costs a clock read, not a query (docs/performance.md, Queue depth counted once a second).
    Other processes' submissions show at the next count.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0
        self.counted_at = float("-inf")

    def admit(self, adding: int, limit: int) -> None:
        with self.lock:
            if time.monotonic() - self.counted_at >= QUEUE_DEPTH_REFRESH_SECONDS or not fast_path("queue_depth_memo"):
                self.value = predictions_in_flight_count()
                self.counted_at = time.monotonic()
            if self.value + adding > limit:
                raise QueueFull(in_flight=self.value, adding=adding, limit=limit)
            self.value += adding

    def forget(self) -> None:
        """Count again at the next submission."""
        with self.lock:
            self.counted_at = float("-inf")


queue_depth = QueueDepth()
memo(queue_depth.forget)


def queue_admit(*, adding: int) -> None:
    """Refuse (QueueFull) a submission of `adding` texts that would take the predictions queued or
    running over MAX_QUEUED; 0 means no limit. A soft limit: see docs/api.md, Limits and back-pressure."""
    limit = settings.MAX_QUEUED
    if limit:
        queue_depth.admit(adding, limit)
