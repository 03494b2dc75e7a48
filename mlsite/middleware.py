"""Every request gets an id (X-Request-ID in, or a new one), returned in its answer and carried by
every log record of the request, and ends with one JSON access line and a count in /metrics."""

from __future__ import annotations

import logging
import time

from django.core.signals import request_finished
from django.utils.functional import SimpleLazyObject, empty

from mlsite.logs import request_id_from_header, request_id_var
from predictions.monitoring import http_request_observe

access_logger = logging.getLogger("mlsite.access")

# Probes and scrapes arrive every few seconds: their access lines are DEBUG, not INFO.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _user_id(request) -> int | None:
    """The authenticated user's id, without running a session lookup the view never needed."""
    user = getattr(request, "user", None)  # DRF puts the token's user here once it authenticates
    if isinstance(user, SimpleLazyObject) and user._wrapped is empty:
        return None
    return getattr(user, "pk", None)


class RequestContextMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        request_id = request_id_from_header(request.META.get("HTTP_X_REQUEST_ID"))
        # Kept until the response is closed, not just until this returns: Django logs a 4xx answer
        # ("Bad Request: …") after the last middleware, and that line belongs to the request too.
        request_id_var.set(request_id)
        started = time.perf_counter()
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        duration_ms = (time.perf_counter() - started) * 1000
        http_request_observe(request.method, response.status_code)
        path = request.path  # never the query string: the admin's search puts text there
        access_logger.log(
            logging.DEBUG if path in QUIET_PATHS else logging.INFO,
            "%s %s %s",
            request.method,
            path,
            response.status_code,
            extra={
                "method": request.method,
                "path": path,
                "status": response.status_code,
                "duration_ms": round(duration_ms, 2),
                "user_id": _user_id(request),
            },
        )
        return response


def _request_id_forget(**_) -> None:
    request_id_var.set(None)


request_finished.connect(_request_id_forget, dispatch_uid="mlsite.request_id_forget")
