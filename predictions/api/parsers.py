"""Request parsers that turn every malformed body into a 400 naming the body, never a 500."""

from __future__ import annotations

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser, but JSON nested deeper than Python's recursion limit is a parse error.

    `json.load` raises RecursionError (not ValueError) on e.g. 10,000 nested arrays, which DRF's
    parser lets through as a 500; a 2 MiB body can nest a million levels.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
