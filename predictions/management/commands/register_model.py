"""Record a model artifact as a candidate version (`--promote`: and serve it); the admin compares, promotes and rolls back."""

from __future__ import annotations

import json
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from predictions.registry import UnknownModel
from predictions.services.shadow import shadow_start, shadow_stop
from predictions.services.versions import VersionRefused, model_version_promote, model_version_register


class Command(BaseCommand):
    help = "Register a model artifact (bundled:NAME, a directory or a hub id) as a candidate version of a served model."

    def add_arguments(self, parser) -> None:
        parser.add_argument("model", help="the registry name it is a version of, e.g. sentiment")
        parser.add_argument("source", help="where the artifact lies: bundled:NAME, a local directory, a hub id")
        parser.add_argument("--note", default="", help="how it was made, or why")
        parser.add_argument("--metrics", type=Path, help="a JSON file of evaluation figures (e.g. evaluate's output)")
        parser.add_argument("--user", default="", help="the username recorded as having registered it")
        parser.add_argument("--promote", action="store_true", help="make it the active version at once")
        parser.add_argument(
            "--shadow", choices=["on", "off"], help="shadow it on live traffic (SHADOW_RATE), or stop shadowing it"
        )

    def handle(
        self,
        *args,
        model: str,
        source: str,
        note: str,
        metrics: Path | None,
        user: str,
        promote: bool,
        shadow: str | None,
        **options,
    ) -> None:
        who = None
        if user:
            try:
                who = get_user_model().objects.get(username=user)
            except get_user_model().DoesNotExist:
                raise CommandError(f"--user: no user named {user!r}") from None
        figures = None
        if metrics is not None:
            try:
                figures = json.loads(metrics.read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"--metrics: {exc}") from None
            if not isinstance(figures, dict):
                raise CommandError("--metrics: expected a JSON object of figures by name")
        try:
            version, created = model_version_register(name=model, source=source, user=who, metrics=figures, note=note)
            if promote and version.state != "active":
                model_version_promote(version, user=who)
                version.refresh_from_db()
            if shadow == "on":
                shadow_start(version)
            elif shadow == "off":
                shadow_stop(version)
        except (UnknownModel, VersionRefused) as exc:  # shadowing an active version is refused too
            raise CommandError(str(exc)) from None
        self.stdout.write(
            json.dumps(
                {
                    "id": version.pk,
                    "model": model,
                    "version": version.version,
                    "state": version.state,
                    "shadow": version.shadow,
                    "created": created,
                }
            )
        )
