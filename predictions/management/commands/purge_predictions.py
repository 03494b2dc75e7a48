"""Retention: delete, or redact the text of, finished predictions older than a number of days."""

from __future__ import annotations

import json
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from predictions.services.retention import predictions_purge


class Command(BaseCommand):
    help = (
        "Delete finished predictions created more than DAYS ago, with their result history and reviews "
        "(--redact: keep the rows for audit, replace the text with a marker). Their result-cache entries "
        "are deleted too. Queued and running rows are left alone. Works in chunks of --batch-size rows."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--older-than", type=int, required=True, metavar="DAYS", help="rows created more than DAYS days ago"
        )
        parser.add_argument("--redact", action="store_true", help="keep the rows, replace their text with a marker")
        parser.add_argument("--dry-run", action="store_true", help="change nothing; say what would be done")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=settings.PURGE_BATCH_SIZE,
            metavar="N",
            help="rows per transaction (default PURGE_BATCH_SIZE)",
        )

    def handle(self, *args, older_than: int, redact: bool, dry_run: bool, batch_size: int, **options) -> None:
        if older_than < 1:
            raise CommandError(f"--older-than: must be at least 1 day (got {older_than})")
        if batch_size < 1:
            raise CommandError(f"--batch-size: must be at least 1 (got {batch_size})")
        verb, done = ("redact", "redacted") if redact else ("delete", "deleted")
        with tqdm(unit="row", file=sys.stderr, disable=dry_run or options["verbosity"] < 1) as bar:
            try:
                counts = predictions_purge(
                    older_than_days=older_than,
                    redact=redact,
                    dry_run=dry_run,
                    batch_size=batch_size,
                    on_chunk=bar.update,
                )
            except Exception as exc:  # the chunk in progress was rolled back; finished chunks stay done
                raise CommandError(
                    f"purge stopped after {bar.n} row(s) ({type(exc).__name__}: {exc}); the chunk in progress was "
                    "rolled back, nothing of it changed. Run the same command again to go on."
                ) from exc
        rows = f"{counts['predictions']} finished prediction(s) created more than {older_than} day(s) ago"
        if redact:
            detail = f"{counts['history'] + counts['reviews']} reviewer note(s) in their history and trail"
        else:
            detail = f"{counts['history']} earlier result(s), {counts['reviews']} review(s), {counts['batches']} emptied batch(es)"
        left = f"{counts['unfinished_left']} queued or running left alone"
        if dry_run:
            self.stdout.write(f"dry run: would {verb} {rows} ({detail}); {left}. Nothing was changed.")
        else:
            self.stdout.write(f"{done} {rows} ({detail}); {counts['cache_keys']} result-cache key(s) cleared; {left}.")
        self.stdout.write(json.dumps({"mode": verb, "dry_run": dry_run, **counts}))
