"""MAX_QUEUED: a submission that would put too many predictions in flight is refused, storing nothing.
SHADOW_MAX_QUEUED: past it, no more shadow answers are sampled (services.shadow)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from django.conf import settings

from mlsite.fastpaths import fast_path
from predictions.memos import memo
from predictions.selectors import predictions_in_flight_count, shadow_backlog_count

QUEUE_DEPTH_REFRESH_SECONDS = 1.0
# Percent of MAX_QUEUED that batches may not fill: kept for single texts, so a batch backlog never
# turns interactive clients away (docs/api.md, Queue depth).
SINGLE_TEXT_RESERVE_PERCENT = 5


class QueueFull(Exception):
    """Accepting the submission would put more than MAX_QUEUED predictions in flight."""

    def __init__(self, *, in_flight: int, adding: int, limit: int, reserved: int = 0) -> None:
        which = f"MAX_QUEUED {limit + reserved}, less {reserved} kept for single texts" if reserved else "MAX_QUEUED"
        super().__init__(
            f"The queue is full: {in_flight} predictions are queued or running and {adding} more would pass "
            f"the limit of {limit} ({which}). Nothing was stored; retry later."
        )
        self.in_flight, self.adding, self.limit = in_flight, adding, limit


class QueueDepth:
    """A queue's depth as this process last counted it (`count`), plus what it admitted since.

    The COUNT runs at most once per QUEUE_DEPTH_REFRESH_SECONDS per process, so a submission
    costs a clock read, not a query (docs/performance.md, Queue depth counted once a second).
    Other processes' submissions show at the next count.
    """

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count
        self.lock = threading.Lock()
        self.value = 0
        self.counted_at = float("-inf")

    def _recount_if_stale(self) -> None:
        if time.monotonic() - self.counted_at >= QUEUE_DEPTH_REFRESH_SECONDS or not fast_path("queue_depth_memo"):
            self.value = self.count()
            self.counted_at = time.monotonic()

    def admit(self, adding: int, limit: int, *, reserved: int = 0) -> None:
        """Count `adding` more in flight, or raise QueueFull if that would pass `limit` - `reserved`."""
        with self.lock:
            self._recount_if_stale()
            if self.value + adding > limit - reserved:
                raise QueueFull(in_flight=self.value, adding=adding, limit=limit - reserved, reserved=reserved)
            self.value += adding

    def take(self, wanted: int, limit: int) -> int:
        """Count as many more of `wanted` as `limit` has room for, and return how many that is."""
        with self.lock:
            self._recount_if_stale()
            taken = max(0, min(wanted, limit - self.value))
            self.value += taken
            return taken

    def forget(self) -> None:
        """Count again at the next submission."""
        with self.lock:
            self.counted_at = float("-inf")


queue_depth = QueueDepth(predictions_in_flight_count)
memo(queue_depth.forget)
shadow_backlog = QueueDepth(shadow_backlog_count)  # SHADOW_MAX_QUEUED (services.shadow)
memo(shadow_backlog.forget)


def queue_admit(*, adding: int, batch: bool = False) -> None:
    """Refuse (QueueFull) a submission of `adding` texts that would take the predictions queued or
    running over MAX_QUEUED; 0 means no limit. A batch may not fill the last SINGLE_TEXT_RESERVE_PERCENT
    of it. A soft limit: see docs/api.md, Limits and back-pressure."""
    limit = settings.MAX_QUEUED
    if limit:
        queue_depth.admit(adding, limit, reserved=limit * SINGLE_TEXT_RESERVE_PERCENT // 100 if batch else 0)
