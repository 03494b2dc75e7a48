"""Re-run chosen predictions, keeping every earlier result in their history."""

from __future__ import annotations

import json
import sys
from datetime import datetime, time, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from tqdm import tqdm

from predictions.models import ReprocessRun
from predictions.registry import UnknownModel, model_exists
from predictions.selectors import SelectionError, reprocess_pending, reprocess_selection, reprocess_summary
from predictions.services import reprocess


def _moment(value: str, option: str, *, end_of_day: bool = False) -> datetime:
    """YYYY-MM-DD (a whole day; --until includes it) or an ISO 8601 date-time."""
    try:
        moment = parse_datetime(value)
        day = parse_date(value) if moment is None and len(value) == 10 else None
    except ValueError:
        moment = day = None
    if moment is None:
        if day is None:
            raise CommandError(f"{option}: {value!r} is not a date (YYYY-MM-DD) or ISO 8601 date-time")
        moment = datetime.combine(day + timedelta(days=1) if end_of_day else day, time.min)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def _ids(value: str) -> list[int]:
    try:
        ids = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--ids: {value!r} must be comma-separated integers") from None
    if not ids:
        raise CommandError("--ids: give at least one id")
    return ids


class Command(BaseCommand):
    help = (
        "Re-run predictions chosen by selectors (they combine): --all, --status, --model, --model-version, "
        "--since/--until, --ids, --batch. Earlier results move into each prediction's history. "
        "An interrupted run started again with the same selectors resumes where it stopped."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--all", action="store_true", dest="everything", help="every prediction")
        parser.add_argument(
            "--status", action="append", default=[], help="queued, running, succeeded or failed (repeatable)"
        )
        parser.add_argument("--model", default="", help="predictions made by this model")
        parser.add_argument("--model-version", default="", help="predictions made by this model version")
        parser.add_argument("--since", help="created at or after (YYYY-MM-DD or ISO 8601)")
        parser.add_argument("--until", help="created before (ISO 8601) or on or before (YYYY-MM-DD)")
        parser.add_argument("--ids", help="comma-separated prediction ids")
        parser.add_argument("--batch", type=int, help="predictions of this batch")
        parser.add_argument("--to-model", default="", help="re-run under this model instead of each row's own")
        parser.add_argument("--dry-run", action="store_true", help="change nothing; say what would be done")
        parser.add_argument("--sync", action="store_true", help="run inference in this process (no broker needed)")
        parser.add_argument("--chunk-size", type=int, default=settings.PUBLISH_CHUNK_ROWS)
        parser.add_argument(
            "--rate", type=float, help="queue at most this many rows a second (the background lane takes them anyway)"
        )
        parser.add_argument(
            "--new-run", action="store_true", help="start afresh instead of resuming an interrupted run"
        )

    def handle(self, *args, **options) -> None:
        if options["chunk_size"] < 1:
            raise CommandError("--chunk-size must be at least 1")
        if options["rate"] is not None and not options["rate"] > 0:  # also refuses nan
            raise CommandError(f"--rate must be a positive number of rows a second (got {options['rate']})")
        to_model = options["to_model"]
        if to_model and not model_exists(to_model):
            raise CommandError(f"--to-model: {UnknownModel(to_model)}")
        selectors = {
            "everything": options["everything"],
            "statuses": sorted(set(options["status"])),
            "model": options["model"],
            "model_version": options["model_version"],
            "since": _moment(options["since"], "--since") if options["since"] else None,
            "until": _moment(options["until"], "--until", end_of_day=True) if options["until"] else None,
            "ids": _ids(options["ids"]) if options["ids"] else [],
            "batch": options["batch"],
        }
        try:
            selection = reprocess_selection(**selectors)
        except SelectionError as exc:
            raise CommandError(str(exc)) from exc
        stored = {key: value for key, value in selectors.items() if value}

        if options["dry_run"]:
            self._dry_run(selection, stored, to_model)
            return

        run, resumed = reprocess.reprocess_run_open(
            selectors=stored, to_model=to_model, sync=options["sync"], resume=not options["new_run"]
        )
        pending, in_flight = reprocess_pending(run, selection)
        if not resumed:
            ReprocessRun.objects.filter(pk=run.pk).update(selected=len(pending))
            run.selected = len(pending)
        done_before = reprocess_summary(run)["rerun"] if resumed else 0
        self.stdout.write(
            f"selected {len(pending)} prediction(s) to re-run"
            + (f" (resuming run {run.pk}: {done_before} already re-run, skipped)" if resumed else f" (run {run.pk})")
            + (f"; {in_flight} queued or running elsewhere, left alone" if in_flight else "")
            + (f"; under model {to_model}" if to_model else "")
            + ("; in this process" if options["sync"] else "; queued to workers")
        )
        self._run(run, pending, chunk_size=options["chunk_size"], sync=options["sync"], rate=options["rate"])
        reprocess.reprocess_runs_close()  # this one too, if nothing of it is left running (sync, or workers done)
        summary = reprocess_summary(run)
        self.stdout.write(
            "summary: " + ", ".join(f"{key} {value}" for key, value in summary.items() if key != "pending" or value)
        )
        self.stdout.write(json.dumps({"run": run.pk, **summary}))

    def _dry_run(self, selection, stored: dict, to_model: str) -> None:
        finished = selection.filter(status__in=("succeeded", "failed"))
        by_model = dict(finished.values_list("model_name").annotate(n=Count("pk")).order_by())
        self.stdout.write(
            f"dry run: would re-run {finished.count()} prediction(s) "
            f"({', '.join(f'{n} × {m}' for m, n in sorted(by_model.items())) or 'none'})"
            + (f" under model {to_model}" if to_model else "")
            + f"; {selection.count() - finished.count()} queued or running would be left alone. Nothing was changed."
        )

    def _run(self, run, pending: list[int], *, chunk_size: int, sync: bool, rate: float | None) -> None:
        with tqdm(total=len(pending), unit="row", file=sys.stderr, disable=not pending) as bar:
            reprocess.reprocess_dispatch(run, pending, chunk_size=chunk_size, sync=sync, rate=rate, on_chunk=bar.update)
