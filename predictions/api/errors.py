"""Every answer under /api/ is JSON, whatever DEBUG says: field errors name the field at fault
({"field": ["message"]}), everything else is {"detail": "…"}.

DRF's exception handler answers a DRF view's errors; ApiExceptionMiddleware answers what a view
lets escape (Django's technical 500 page in DEBUG, HTML otherwise); the last URL pattern under
api/ answers any path no route matched (Django's technical 404 page bypasses handler404 in DEBUG).
A database that cannot be reached is a 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core import signals
from django.core.exceptions import (
    BadRequest,
    DisallowedHost,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import Http404, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import Resolver404, resolve
from django.utils.log import log_response
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from mlsite.dbfaults import database_unreachable
from predictions.services.backpressure import QueueFull
from predictions.services.idempotency import IdempotencyKeyReused

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
DATABASE_UNAVAILABLE = "The database is unavailable; nothing was stored. Retry after the Retry-After seconds."


def _database_unavailable(exc: BaseException) -> tuple[dict, dict]:
    """The 503's body and headers, logged once (the cause, no traceback: it is an outage, not a bug)."""
    logger.warning("database unreachable, answered 503: %s: %s", type(exc).__name__, str(exc).strip()[:300])
    return {"detail": DATABASE_UNAVAILABLE}, {"Retry-After": str(settings.DATABASE_RETRY_AFTER)}


def exception_handler(exc, context):
    if database_unreachable(exc):
        body, headers = _database_unavailable(exc)
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers=headers)
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": str(exc)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, exceptions.ParseError):
        return Response({"body": [str(exc.detail)]}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):  # Django would answer an HTML 400
        return Response({"request": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, QueueFull):
        logger.info("submission of %d refused: %d in flight, MAX_QUEUED=%d", exc.adding, exc.in_flight, exc.limit)
        return Response(
            {"detail": str(exc)},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(settings.MAX_QUEUED_RETRY_AFTER)},
        )
    if isinstance(exc, IdempotencyKeyReused):
        return Response({IDEMPOTENCY_HEADER: [str(exc)]}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
    return drf_exception_handler(exc, context)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


class ApiExceptionMiddleware:
    """JSON for an exception a view under /api/ let escape, in every mode, as Django would map it:
    404, 403, 400, else 500 (traceback logged, got_request_exception sent); 503 for an unreachable
    database. A disallowed Host is a JSON 400 too. Elsewhere Django's own pages."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        if _is_api(request):
            try:  # checked here, before CommonMiddleware would raise it (an HTML page in DEBUG)
                request.get_host()
            except DisallowedHost as exc:
                # Named like a field, as every 400's body is (the schema's FieldErrors).
                response = JsonResponse({"Host": ["This host name is not served here (ALLOWED_HOSTS)."]}, status=400)
                security_logger = logging.getLogger("django.security.DisallowedHost")
                log_response(
                    str(exc), exception=exc, request=request, response=response, level="error", logger=security_logger
                )
                return response
        return self.get_response(request)

    def process_exception(self, request, exc: Exception) -> JsonResponse | None:
        if not _is_api(request):
            return None
        if database_unreachable(exc):
            body, headers = _database_unavailable(exc)
            return JsonResponse(body, status=503, headers=headers)
        if isinstance(exc, Http404):
            return JsonResponse({"detail": "Not found."}, status=404)
        if isinstance(exc, PermissionDenied):
            code, detail = 403, "Permission denied."
        elif isinstance(exc, MultiPartParserError | BadRequest | SuspiciousOperation):
            code, detail = 400, "Bad request."
        else:
            signals.got_request_exception.send(sender=None, request=request)
            code, detail = 500, "Server error."
        body = {"request": [detail]} if code == 400 else {"detail": detail}  # a 400 names what was wrong
        response = JsonResponse(body, status=code)
        log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request, exception=exc)
        return response


def _with_slash(request) -> str | None:
    """The path with a slash appended when that is a route (what APPEND_SLASH would redirect to)."""
    if request.path_info.endswith("/"):
        return None
    try:
        match = resolve(request.path_info + "/")
    except Resolver404:
        return None
    return None if match.url_name == "api-not-found" else request.path + "/"


@csrf_exempt
def api_not_found(request, *args, **kwargs):
    """The last route under api/: any path no other route matched, any method, answers a JSON 404."""
    slash = _with_slash(request)
    detail = f"Not found. Did you mean {slash} (with the trailing slash)?" if slash else "Not found."
    return JsonResponse({"detail": detail}, status=404)


def bad_request(request, exception):
    """JSON for a 400 Django raised under /api/ (e.g. a disallowed Host), HTML elsewhere."""
    if _is_api(request):
        return JsonResponse({"request": ["Bad request."]}, status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request, exception):
    if _is_api(request):
        return JsonResponse({"detail": "Permission denied."}, status=403)
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception):
    """JSON for an Http404 under /api/ that no view answered (unmatched paths go to the catch-all route), HTML elsewhere."""
    if _is_api(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    """JSON for an unhandled error under /api/ that no view raised (a middleware's), HTML elsewhere."""
    if _is_api(request):
        return JsonResponse({"detail": "Server error."}, status=500)
    return defaults.server_error(request)
