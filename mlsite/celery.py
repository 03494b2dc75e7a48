"""The Celery app; task settings live in Django settings under the CELERY_ namespace."""

import logging.config
import os

from celery import Celery, signals
from django.conf import settings
from django.db import close_old_connections

from mlsite import logs

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlsite.settings")

app = Celery("mlsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.setup_logging.connect
def _logging_from_django_settings(**_) -> None:
    """Workers and beat log as the web does (settings.LOGGING: JSON lines, LOG_LEVEL), not in Celery's format."""
    logging.config.dictConfig(settings.LOGGING)


@signals.task_prerun.connect
def _database_connection_check(sender=None, **_) -> None:
    """Before each task in a worker, as before each web request: drop a connection that is broken
    (a PostgreSQL restart) or older than CONN_MAX_AGE, and keep the others (CELERY_DB_REUSE_MAX).
    Not for a task run eagerly, inside the caller's own transaction."""
    if not getattr(getattr(sender, "request", None), "is_eager", False):
        close_old_connections()


# The request id travels in each task message and is the worker's log context while the task runs.
signals.before_task_publish.connect(logs.task_message_stamp, weak=False)
signals.task_prerun.connect(logs.task_context_enter, weak=False)
signals.task_postrun.connect(logs.task_context_exit, weak=False)
