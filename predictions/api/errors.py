"""Every API error as JSON naming the field at fault: {"field": ["message"]}."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from predictions.services.backpressure import QueueFull
from predictions.services.idempotency import IdempotencyKeyReused

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"


def exception_handler(exc, context):
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


def page_not_found(request, exception):
    """JSON for a URL under /api/ that matches no route (e.g. /api/v1/predictions/abc/), HTML elsewhere."""
    if _is_api(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    """JSON for an unhandled error under /api/, HTML elsewhere; the traceback goes to the log."""
    if _is_api(request):
        return JsonResponse({"detail": "Server error."}, status=500)
    return defaults.server_error(request)
