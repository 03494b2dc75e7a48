"""Model versions: register a candidate, promote it, roll back; each process serves the active one
within MODEL_VERSION_CHECK_SECONDS (predictions.registry)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from predictions.models import ModelVersion, ModelVersionState
from predictions.registry import UnknownModel, active_versions_forget, model_exists, source_info
from textclf import ModelLoadError

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class VersionRefused(ValueError):
    """A register, promote or rollback that would leave the model in a state it must not be in."""


def model_version_register(
    *,
    name: str,
    source: str,
    user: User | None = None,
    metrics: dict[str, Any] | None = None,
    note: str = "",
) -> tuple[ModelVersion, bool]:
    """Record an artifact as a candidate version of `name` (not served yet); returns (row, created).

    Its labels and kind must be those of the model configured under that name: clients, the review
    desk and the result cache all rely on them. Registering the same artifact again returns its row.
    """
    if not model_exists(name):
        raise UnknownModel(name)
    try:
        info = source_info(source)
        configured = source_info(settings.MLSITE_MODELS[name])
    except (ModelLoadError, OSError) as exc:
        raise VersionRefused(f"source: {exc}") from exc
    if (info.kind, info.labels) != (configured.kind, configured.labels):
        raise VersionRefused(
            f"source: its labels {info.labels} ({info.kind}) are not the model {name!r}'s: "
            f"{configured.labels} ({configured.kind})"
        )
    return ModelVersion.objects.get_or_create(
        name=name,
        version=info.version,
        defaults={"source": source, "registered_by": user, "metrics": metrics, "note": note},
    )


def model_version_promote(version: ModelVersion, *, user: User | None) -> ModelVersion | None:
    """Make `version` the one served for its model; the active one before it is retired (and
    returned, or None). Workers and web processes take it up within MODEL_VERSION_CHECK_SECONDS."""
    now = timezone.now()
    with transaction.atomic():
        rows = {row.pk: row for row in ModelVersion.objects.select_for_update().filter(name=version.name)}
        target = rows[version.pk]
        if target.state == ModelVersionState.ACTIVE:
            raise VersionRefused(f"{target} is already active")
        previous = next((row for row in rows.values() if row.state == ModelVersionState.ACTIVE), None)
        if previous is not None:
            previous.state, previous.retired_at = ModelVersionState.RETIRED, now
            previous.save(update_fields=["state", "retired_at"])  # first: one active row per name
        target.state, target.promoted_by, target.promoted_at = ModelVersionState.ACTIVE, user, now
        target.shadow = False  # it answers every text now
        if target.replaced_id is None and previous is not None:
            target.replaced = previous
        target.save(update_fields=["state", "promoted_by", "promoted_at", "replaced", "shadow"])
        transaction.on_commit(active_versions_forget)
    version.refresh_from_db()
    return previous


def model_version_rollback(name: str, *, user: User | None) -> tuple[ModelVersion, ModelVersion | None]:
    """Retire the active version of `name` and serve again the one it replaced, or the source
    MLSITE_MODELS configures when it replaced none; rolling back again walks further back.
    Returns (retired, now active)."""
    now = timezone.now()
    with transaction.atomic():
        rows = {row.pk: row for row in ModelVersion.objects.select_for_update().filter(name=name)}
        active = next((row for row in rows.values() if row.state == ModelVersionState.ACTIVE), None)
        if active is None:
            raise VersionRefused(f"{name}: no version is active, nothing to roll back")
        back = rows.get(active.replaced_id) if active.replaced_id else None
        active.state, active.retired_at = ModelVersionState.RETIRED, now
        active.save(update_fields=["state", "retired_at"])
        if back is not None:
            back.state, back.promoted_by, back.promoted_at = ModelVersionState.ACTIVE, user, now
            back.save(update_fields=["state", "promoted_by", "promoted_at"])
        transaction.on_commit(active_versions_forget)
    return active, back
