"""Refuse oversized requests: a URL over MAX_URL_BYTES, a body before anything reads it whole."""

from __future__ import annotations

import io
from urllib.parse import quote

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
from django.http import JsonResponse

READ_PIECE = 64 * 1024
MAX_URL_BYTES = 4094  # path (percent-encoded again) and query string: a request line of about that


class RequestSizeLimitMiddleware:
    """414 when the URL is over MAX_URL_BYTES; 413 when the body is over MAX_REQUEST_BYTES.

    With a Content-Length the body is never read. A chunked body (Transfer-Encoding: chunked, no
    Content-Length) from a server that ends the stream itself (granian sets wsgi.input_terminated)
    is read in pieces up to MAX_REQUEST_BYTES + 1 bytes: one byte more is a 413 (the rest is never
    read); otherwise the body is handed on with its length, as if it had come with a Content-Length
    (Django alone would see an empty body, since it reads no further than CONTENT_LENGTH).
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        url_bytes = _url_bytes(request.META)
        if url_bytes is not None:
            return _refusal(
                {
                    "detail": f"URL of {url_bytes} bytes (path and query string) is over the limit of {MAX_URL_BYTES} bytes."
                },
                status=414,
            )
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length == "0" and _is_chunked(request.META):
            return self._chunked_body_read(request) or self.get_response(request)
        try:
            size = int(length)
        except ValueError:
            return _refusal({"detail": "Content-Length must be an integer."}, status=400)
        if size > settings.MAX_REQUEST_BYTES:
            return _refusal(
                {
                    "detail": f"Request body of {size} bytes is over the limit of {settings.MAX_REQUEST_BYTES} bytes (MAX_REQUEST_BYTES)."
                },
                status=413,
            )
        return self.get_response(request)

    def _chunked_body_read(self, request) -> JsonResponse | None:
        """Read the chunked body up to the limit; a 413 if it goes past it, else None (body in place)."""
        limit = settings.MAX_REQUEST_BYTES
        stream = request.META["wsgi.input"]
        body = io.BytesIO()
        size = 0
        while size <= limit:
            piece = stream.read(min(READ_PIECE, limit + 1 - size))
            if not piece:
                break
            body.write(piece)
            size += len(piece)
        if size > limit:
            return _refusal(
                {
                    "detail": f"Request body (chunked) is over the limit of {limit} bytes (MAX_REQUEST_BYTES); "
                    "it was refused without reading the rest."
                },
                status=413,
            )
        request.META["CONTENT_LENGTH"] = str(size)
        request._stream = LimitedStream(io.BytesIO(body.getvalue()), size)  # what WSGIRequest builds from a length
        return None


def _refusal(body: dict, *, status: int) -> JsonResponse:
    """A JSON error with its Content-Length (this middleware runs outside CommonMiddleware, which adds it)."""
    response = JsonResponse(body, status=status)
    response["Content-Length"] = str(len(response.content))
    return response


def _url_bytes(meta) -> int | None:
    """The URL's length when it is over MAX_URL_BYTES, else None.

    Django has put the path in META decoded (UTF-8): it is percent-encoded again (close to, not
    always exactly, what the client sent: `%41` counts as `A`) only when it could be over the limit
    (a character is at most 12 bytes encoded); the query string is counted as sent."""
    path = meta.get("SCRIPT_NAME", "") + meta.get("PATH_INFO", "")
    query = meta.get("QUERY_STRING", "")
    extra = len(query) + 1 if query else 0
    if 12 * len(path) + extra <= MAX_URL_BYTES:
        return None
    size = len(quote(path.encode("utf-8", "surrogateescape"), safe="/;:@&=+$,-_.!~*'()")) + extra
    return size if size > MAX_URL_BYTES else None


def _is_chunked(meta) -> bool:
    return bool(meta.get("wsgi.input_terminated")) and "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower()
