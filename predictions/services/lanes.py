"""Turns within a lane: where newly queued rows go among the rows already waiting in their lane.

A worker's claim takes queued rows by lane, then by turn (services.sql). A lane's clock is its
smallest queued turn (the next one served). New rows take the turns from the clock on, or after
their owner's last queued turn if that is later, one each: two owners' batches sent together interleave (round
robin), and an owner who queues more waits behind their own backlog, not behind everyone's.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import Max, Min, Q

from predictions.models import Lane, Prediction, PredictionStatus


def turns_take(rows: Sequence[Prediction], *, lane: Lane, owner_id: int | None = None) -> None:
    """Set consecutive turns in `lane` on rows about to be queued there, in their order (one query).

    With `owner_id`, the turns start after that owner's last queued turn in the lane too. Two
    submissions at the same moment may take overlapping turns: they share the turns, which is fair.
    """
    queued = Prediction.objects.filter(status=PredictionStatus.QUEUED, lane=lane)
    owners = {"last": Max("turn", filter=Q(owner_id=owner_id))} if owner_id is not None else {}
    found = queued.aggregate(clock=Min("turn"), **owners)
    start = 0 if found["clock"] is None else found["clock"] - 1  # the first new row shares the turn served now
    start = max(start, found.get("last") or 0)
    for offset, row in enumerate(rows, start=1):
        row.turn = start + offset
