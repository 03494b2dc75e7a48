"""Logs as JSON lines, each carrying the id of the request (or task) it belongs to.

The id lives in a context variable: the request middleware sets it for a web request, the Celery
signals below carry it in the task message and set it in the worker while the task runs. A filter
on the handler copies it onto every record, so no call site has to pass it.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar, Token
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

#: The Celery message header that carries the publishing request's id to the worker.
TASK_HEADER = "mlsite_request_id"

# An incoming X-Request-ID is kept only if it is short and made of harmless characters (no spaces,
# quotes or newlines that could forge a log line); otherwise a fresh id replaces it.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:;=+/@-]{0,127}", re.ASCII)


def request_id_from_header(value: str | None) -> str:
    """The incoming id if it is sane, else a new one (32 hex digits)."""
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return request_id_var.get()


class RequestIdFilter(logging.Filter):
    """Stamp the current request id on each record (a record may carry its own, e.g. from `extra`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
    # Django's request loggers attach the request object: its repr holds the query string, which
    # can carry text (the admin's search), so it is left out; the access line says what matters.
    "request",
    "server_time",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, then any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)  # ASCII: safe on any stderr encoding


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def logging_config(*, log_format: str, level: str) -> dict:
    """settings.LOGGING: one handler on stderr, JSON or plain, with the request id filter."""
    formatter = {"()": JsonFormatter} if log_format == "json" else {"format": PLAIN_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "default", "filters": ["request_id"]},
        },
        "root": {"handlers": ["console"], "level": level},
    }


# --- Celery: the id travels in the task message and is set while the task runs ----------------

_task_tokens: dict[str, Token[str | None]] = {}


def task_message_stamp(headers: dict | None = None, **_) -> None:
    """before_task_publish: put the current request id into the message's headers."""
    request_id = request_id_var.get()
    if request_id and headers is not None:
        headers[TASK_HEADER] = request_id


def task_context_enter(task_id: str | None = None, task=None, **_) -> None:
    """task_prerun: run under the id of the request that published the task.

    A task run eagerly (in the publishing process) keeps the id already set; one published without
    a request (beat's sweeper) runs under its own task id, which then travels with what it publishes.
    """
    request_id = getattr(task.request, TASK_HEADER, None) if task is not None else None
    request_id = request_id or request_id_var.get() or task_id
    if task_id:
        _task_tokens[task_id] = request_id_var.set(request_id)


def task_context_exit(task_id: str | None = None, **_) -> None:
    """task_postrun: back to the context the task started in."""
    token = _task_tokens.pop(task_id, None) if task_id else None
    if token is not None:
        request_id_var.reset(token)
