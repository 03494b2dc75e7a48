"""Turns within a lane: where newly queued rows go among the rows already waiting in their lane.

A worker's claim takes queued rows by lane, then by turn (services.sql). A lane's clock is its
smallest queued turn (the next one served). New rows take the turns from the clock on, or after
their owner's last queued turn if that is later, one each: two owners' batches sent together interleave (round
robin), and an owner who queues more waits behind their own backlog, not behind everyone's.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.postgres.fields import ArrayField
from django.db import connection
from django.db.models import BigIntegerField, F, Func, Max, Min, OuterRef, Q, Subquery, Value
from django.db.models.expressions import CombinedExpression

from predictions.models import Lane, Prediction, PredictionStatus


def turns_start(*, lane: Lane, owner_id: int | None = None) -> int:
    """The turn before the first one rows queued now in `lane` take (one query): the lane's clock less
    one, so the first new row shares the turn served now, or, with `owner_id`, that owner's last
    queued turn in the lane if it is later."""
    queued = Prediction.objects.filter(status=PredictionStatus.QUEUED, lane=lane)
    owners = {"last": Max("turn", filter=Q(owner_id=owner_id))} if owner_id is not None else {}
    found = queued.aggregate(clock=Min("turn"), **owners)
    start = 0 if found["clock"] is None else found["clock"] - 1
    return max(start, found.get("last") or 0)


def turns_take(rows: Sequence[Prediction], *, lane: Lane, owner_id: int | None = None) -> None:
    """Set consecutive turns in `lane` on rows about to be queued there, in their order (one query).

    With `owner_id`, the turns start after that owner's last queued turn in the lane too. Two
    submissions at the same moment may take overlapping turns: they share the turns, which is fair.
    """
    start = turns_start(lane=lane, owner_id=owner_id)
    for offset, row in enumerate(rows, start=1):
        row.turn = start + offset


def turns_by_id(ids: Sequence[int], *, lane: Lane) -> CombinedExpression:
    """What turns_take sets on the rows with these ids in id order, as an expression for the UPDATE
    that queues them: each row's turn is the start plus its rank among `ids`. The re-run sets its
    rows' turns in the statement that requeues them, rather than in a bulk_update of its own, which
    cost the `reprocess` command a third of its time (docs/performance.md, Turns set by the requeue).

    On PostgreSQL the rank is the row's position in the sorted ids (array_position), one lookup per
    row; elsewhere a count of the ids up to the row's, a subquery per row."""
    if connection.vendor == "postgresql":
        rank: Func | Subquery = Func(
            Value(sorted(ids), output_field=ArrayField(BigIntegerField())),
            F("pk"),
            function="array_position",
            output_field=BigIntegerField(),
        )
    else:
        count = (
            Prediction.objects.filter(pk__in=list(ids), pk__lte=OuterRef("pk"))
            .order_by()
            .annotate(rank=Func(F("pk"), function="COUNT"))
            .values("rank")
        )
        rank = Subquery(count, output_field=BigIntegerField())
    return Value(turns_start(lane=lane)) + rank
