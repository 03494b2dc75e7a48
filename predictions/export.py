"""The review desk's CSV export: streamed in chunks, with text a spreadsheet would run as a formula defused."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet

from predictions.models import Prediction

EXPORT_COLUMNS = [
    ("id", "id"),
    ("created_at", "created_at"),
    ("owner", "owner__username"),
    ("model", "model_name"),
    ("model_version", "model_version"),
    ("status", "status"),
    ("label", "label"),
    ("score", "score"),
    ("cached", "cached"),
    ("corrected_label", "corrected_label"),
    ("reviewed_by", "reviewed_by__username"),
    ("reviewed_at", "reviewed_at"),
    ("finished_at", "finished_at"),
    ("error", "error"),
    ("text", "text"),
]


class Echo:
    """A file-like object whose write returns the line, so csv.writer yields lines instead of storing them."""

    def write(self, value: str) -> str:
        return value


def csv_rows(queryset: QuerySet[Prediction]) -> Iterator[str]:
    """CSV lines for the export, fetched in chunks so memory stays flat for any number of rows."""
    writer = csv.writer(Echo())
    yield writer.writerow([name for name, _ in EXPORT_COLUMNS])
    for row in queryset.order_by("pk").values_list(*[field for _, field in EXPORT_COLUMNS]).iterator(chunk_size=2000):
        yield writer.writerow([spreadsheet_safe(value) for value in row])


def spreadsheet_safe(value: Any) -> Any:
    """Text a spreadsheet would run as a formula (=, +, -, @ first) is prefixed with a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
