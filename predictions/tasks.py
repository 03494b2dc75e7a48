"""Celery tasks: thin wrappers that take row ids and call services."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import celeryd_after_setup, worker_init, worker_process_init
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connections

from predictions.registry import models_preload, served_models
from predictions.services.dispatch import model_queue, shadow_queue
from predictions.services.idempotency import idempotency_keys_expire
from predictions.services.reprocess import reprocess_runs_close
from predictions.services.shadow import shadow_sweep, shadow_task_run
from predictions.services.worker import predictions_run, predictions_sweep
from predictions.threads import cpu_priority_lowest, torch_threads_configure

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS = (OperationalError, InterfaceError, ConnectionError, TimeoutError)
# Acked once the rows are written, given back if the worker dies, retried with backoff on a database
# or broker that is briefly away: the run and shadow tasks alike.
DURABLE: dict = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
}


@shared_task(bind=True, name="predictions.run", **DURABLE)
def predictions_run_task(self, prediction_ids: list[int]) -> dict[str, int]:
    """Classify the unfinished rows among `prediction_ids`; a finished row is never run again."""
    try:
        return predictions_run(prediction_ids, task_id=self.request.id or "")
    except TRANSIENT_ERRORS:
        # A connection the server dropped (a restart) must not stay open: Celery writes the retry's
        # state to the database next, on this process's connection (autoretry then raises Retry).
        close_old_connections()
        raise


@shared_task(name="predictions.shadow", **DURABLE)
def predictions_shadow_task() -> dict[str, int]:
    """On a shadow worker: give the queued shadow answers (services.shadow); none is ever returned."""
    try:
        return {"shadow": shadow_task_run()}
    except TRANSIENT_ERRORS:
        close_old_connections()
        raise


@shared_task(name="predictions.sweep", acks_late=True)
def predictions_sweep_task() -> dict[str, int]:
    """Run by beat every SWEEP_INTERVAL seconds: resend lost work (see services.worker.predictions_sweep)."""
    result = predictions_sweep(queued_after=settings.SWEEP_QUEUED_AFTER, running_after=settings.SWEEP_RUNNING_AFTER)
    result["reprocess_runs_closed"] = reprocess_runs_close()
    result["idempotency_keys_expired"] = idempotency_keys_expire(max_rows=settings.SWEEP_MAX_ROWS)
    result["shadow_waiting"] = int(shadow_sweep())
    return result


@celeryd_after_setup.connect
def _model_queues_consume(sender=None, instance=None, **_) -> None:
    """A worker consumes the queue of each model it serves (WORKER_MODELS, or all), besides the
    queues its command names (CELERY_QUEUE: beat's tasks): a pool receives only its models' work.
    A shadow worker (WORKER_ROLE=shadow) consumes the shadow queue and nothing else, whatever its
    command says: no live work ever runs at its priority."""
    if instance is None:
        return
    if settings.WORKER_ROLE == "shadow":
        instance.app.amqp.queues.select(shadow_queue())
        logger.info("shadow worker for %s: consuming only %s", ", ".join(served_models()), shadow_queue())
        return
    for name in served_models():
        instance.app.amqp.queues.select_add(model_queue(name))
    consumed = sorted(instance.app.amqp.queues.consume_from or ())
    logger.info("serving %s from the queues %s", ", ".join(served_models()), ", ".join(consumed))


@worker_init.connect
def _shadow_worker_priority_lower(**_) -> None:
    """A shadow worker runs at the lowest CPU priority, set in the main process before the pool forks
    so every pool process and its torch threads inherit it: the kernel gives the cores to the web,
    PostgreSQL and live workers first, and a shadow pass runs on what they leave."""
    if settings.WORKER_ROLE == "shadow":
        logger.info("shadow worker: CPU priority %s", cpu_priority_lowest())


@worker_init.connect
def _models_load_before_fork(sender=None, **_) -> None:
    """In a prefork worker's main process: import torch and load the models once, before the pool
    forks, so a pool process that replaces a dead one starts in milliseconds, well inside Celery's
    start-up limit (worker_proc_alive_timeout) even on a busy host (docs/performance.md, Model
    loaded before the fork). Not on a GPU: CUDA cannot cross a fork."""
    if settings.WORKER_ROLE == "shadow":  # it loads only a shadowed version, when one is first asked for
        return
    if sender is None or get_implementation(sender.pool_cls) is not PreforkPool:
        return
    import torch  # noqa: PLC0415 (torch loads lazily: the web never imports it)

    if torch.version.cuda is not None and not (settings.INFERENCE_INT8 or settings.INFERENCE_DEVICE == "cpu"):
        return
    # One thread here: no intra-op thread pool exists for the fork to copy half-alive; each child sets its own.
    torch.set_num_threads(1)
    models_preload()
    connections.close_all()  # the active versions were read here: no child may inherit this process's connection


@worker_process_init.connect
def _worker_process_prepare(**_) -> None:
    """Each prefork child gets its share of the cores (torch's default would oversubscribe them)
    and has the served models before its first task (inherited from the main process, or loaded
    here), so no request pays for the load."""
    started = time.monotonic()
    threads = torch_threads_configure()
    if settings.WORKER_ROLE != "shadow":
        models_preload()
    logger.info("pool process ready in %.3f s, %d torch threads", time.monotonic() - started, threads)
