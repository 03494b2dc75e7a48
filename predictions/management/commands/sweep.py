"""Resend queued predictions whose message may be lost and requeue those stuck running (beat does this every minute)."""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand

from predictions.services.worker import predictions_sweep


class Command(BaseCommand):
    help = "Republish stale queued predictions and requeue predictions stuck in running."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--queued-after", type=float, default=settings.SWEEP_QUEUED_AFTER, help="seconds")
        parser.add_argument("--running-after", type=float, default=settings.SWEEP_RUNNING_AFTER, help="seconds")

    def handle(self, *args, queued_after: float, running_after: float, **options) -> None:
        result = predictions_sweep(queued_after=queued_after, running_after=running_after)
        self.stdout.write(json.dumps(result))
