"""One wake-up message per burst of single predictions, instead of one message per request.

A worker's run task claims other queued rows besides its own (services.predictions_run), so a
message is only needed to wake a worker. Under load most per-request messages found their row
already run by another task and still cost a publish with confirm in the web, RabbitMQ's work, and
a task in the worker (README, Throughput). Now a submission publishes only when no wake-up is
pending; a Redis key marks one as pending:

- the web, after its INSERT committed, sets the key if it is absent (SET NX, expiring after
  WAKEUP_COALESCE_MS) and publishes only if it set it;
- a run task that claims other rows deletes the key *before* its first claim, and claims other
  rows at least once before it returns.

So a submission that finds the key set committed its row before the pending task's claim, which
will take it; one that finds it gone publishes. Redis down at submit: the web publishes. A task
that reaches BATCH_LOOP_SECONDS with rows still queued sends a wake-up before it returns. Web and
worker must share REDIS_URL and the queue (the key is per queue). Two fault paths leave rows to
the sweeper (SWEEP_QUEUED_AFTER), as a lost message does: a worker that cannot delete the key
(Redis failing between the web's SET and the worker's DELETE: rows submitted until the key
expires), and a publish that fails after setting it (the key is deleted then; rows submitted
while the publish was being tried).
"""

from __future__ import annotations

import logging

from django.conf import settings

from predictions.notify import redis_client

logger = logging.getLogger(__name__)


def _key() -> str:
    return f"mlsite:wakeup-pending:{settings.CELERY_TASK_DEFAULT_QUEUE}"


def wakeup_needed() -> bool:
    """True when this submission must publish its own message (and the key now says one is
    pending); False when a pending wake-up's claim will take its row."""
    client = redis_client()
    if client is None or settings.WAKEUP_COALESCE_MS == 0:
        return True
    try:
        return bool(client.set(_key(), b"1", nx=True, px=settings.WAKEUP_COALESCE_MS))
    except Exception as exc:  # Redis cannot say: publish, as without coalescing
        logger.warning("wake-up coalescing unavailable (%s): %s", type(exc).__name__, exc)
        return True


def wakeup_taken() -> None:
    """A run task is about to claim other queued rows: submissions from now on publish again.
    Also called when the publish that set the key failed."""
    client = redis_client()
    if client is None:  # cleared whatever this process's WAKEUP_COALESCE_MS: the web's may differ
        return
    try:
        client.delete(_key())
    except Exception as exc:  # the key expires within WAKEUP_COALESCE_MS
        logger.warning("could not clear the pending wake-up (%s): %s", type(exc).__name__, exc)
