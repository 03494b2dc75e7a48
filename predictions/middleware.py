"""Refuse oversized request bodies before anything reads them."""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse


class RequestSizeLimitMiddleware:
    """413 when Content-Length exceeds MAX_REQUEST_BYTES; the body is never read."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            size = int(length)
        except ValueError:
            return JsonResponse({"detail": "Content-Length must be an integer."}, status=400)
        if size > settings.MAX_REQUEST_BYTES:
            return JsonResponse(
                {
                    "detail": f"Request body of {size} bytes is over the limit of {settings.MAX_REQUEST_BYTES} bytes (MAX_REQUEST_BYTES)."
                },
                status=413,
            )
        return self.get_response(request)
