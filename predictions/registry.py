"""Which classifiers this deployment serves, and the loaded instance of each (once per process).

Settings name the models and their first source (MLSITE_MODELS); a model's active ModelVersion row,
once one is promoted, names the source served instead. Each process reads the active versions at
most every MODEL_VERSION_CHECK_SECONDS, so a promotion reaches running workers and web processes
within seconds, without a restart. Nothing loads until a model is first used, so the web process
stays light unless it must answer the models endpoint or a cache key.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError, transaction

from textclf import ModelLoadError
from textclf.serving.loading import ModelInfo, classifier_load, model_info

if TYPE_CHECKING:
    from textclf.serving.classifier import TextClassifier

logger = logging.getLogger(__name__)

# The models this app ships, one directory each: what a `bundled:NAME` source in MLSITE_MODELS names.
BUNDLED_MODELS_DIR = Path(__file__).resolve().parent / "bundled_models"


class UnknownModel(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown model {self.name!r}; this deployment serves: {', '.join(model_names())}"


def model_names() -> list[str]:
    return list(settings.MLSITE_MODELS)


def served_models() -> list[str]:
    """The models this worker serves: WORKER_MODELS (a pool), or every model."""
    return [name for name in model_names() if not settings.WORKER_MODELS or name in settings.WORKER_MODELS]


def model_exists(name: str) -> bool:
    return name in settings.MLSITE_MODELS


_lock = threading.Lock()
_active: dict[str, str] = {}  # model name → source of its active ModelVersion, as last read
_shadow: dict[str, tuple[int, str]] = {}  # model name → (id, source) of its shadowed ModelVersion, as last read
_active_read_at = float("-inf")  # time.monotonic() of that read
_loaded: dict[str, tuple[tuple, TextClassifier]] = {}  # model name → (what it was loaded from, the classifier)
_shadow_loaded: dict[str, tuple[tuple, TextClassifier]] = {}  # the same, for shadowed versions


def _active_sources() -> dict[str, str]:
    """The active versions' sources, read again once MODEL_VERSION_CHECK_SECONDS have passed. If the
    database can't be read, the last sources read stay (a worker keeps serving what it served)."""
    global _active, _shadow, _active_read_at
    if time.monotonic() - _active_read_at < settings.MODEL_VERSION_CHECK_SECONDS:
        return _active
    from django.db.models import Q  # noqa: PLC0415

    from predictions.models import ModelVersion, ModelVersionState  # noqa: PLC0415 (models need apps ready; this module doesn't)

    try:
        with transaction.atomic():  # a savepoint inside a caller's transaction: a failure here leaves it usable
            rows = list(
                ModelVersion.objects.filter(Q(state=ModelVersionState.ACTIVE) | Q(shadow=True)).values_list(
                    "pk", "name", "source", "state", "shadow"
                )
            )
        _active = {name: source for _, name, source, state, _ in rows if state == ModelVersionState.ACTIVE}
        _shadow = {
            name: (pk, source)
            for pk, name, source, state, shadow in rows
            if shadow and state != ModelVersionState.ACTIVE
        }
    except DatabaseError as exc:
        logger.warning("could not read the active model versions, serving those read before: %s", exc)
    _active_read_at = time.monotonic()
    return _active


def shadow_version(name: str) -> tuple[int, str] | None:
    """(id, source) of the version shadowing `name` on live traffic, or None."""
    _active_sources()
    return _shadow.get(name)


def shadow_classifier_get(name: str, source: str) -> TextClassifier:
    """The loaded classifier of a shadowed version (one per model name, beside the served one)."""
    return _classifier_in(_shadow_loaded, name, source)


def _classifier_in(slots: dict[str, tuple[tuple, TextClassifier]], name: str, source: str) -> TextClassifier:
    """The classifier held in `slots` for `name`, loaded again when its source or the inference
    settings change (the one it replaces is let go: one classifier per name in memory)."""
    with _lock:
        device = "cpu" if settings.INFERENCE_INT8 else settings.INFERENCE_DEVICE  # int8 kernels are CPU-only
        key = (source, device, settings.INFERENCE_INT8, settings.INFERENCE_PACKED)
        loaded = slots.get(name)
        if loaded is None or loaded[0] != key:
            if loaded is not None:
                logger.info("model %r: loading %s in place of %s", name, source, loaded[0][0])
            classifier = classifier_load(
                name,
                source,
                bundled_dir=BUNDLED_MODELS_DIR,
                device=device,
                int8=settings.INFERENCE_INT8,
                packed=settings.INFERENCE_PACKED,
            )
            slots[name] = loaded = (key, classifier)
        return loaded[1]


def active_versions_forget() -> None:
    """Read the active versions again at the next use (after a promotion in this process)."""
    global _active_read_at
    _active_read_at = float("-inf")


def model_source(name: str) -> str:
    """Where the served artifact of `name` lies: its active version's source, else MLSITE_MODELS's."""
    if not model_exists(name):
        raise UnknownModel(name)
    return _active_sources().get(name) or settings.MLSITE_MODELS[name]


def classifier_get(name: str) -> TextClassifier:
    """The loaded TextClassifier serving a registered model name: loaded again when its active version changes."""
    return _classifier_in(_loaded, name, model_source(name))


def models_preload() -> None:
    """Load every model this worker serves now; a model that fails is logged and its rows fail with the reason later."""
    for name in served_models():
        try:
            classifier_get(name)
        except Exception:
            logger.exception("could not preload model %r", name)


def model_info_get(name: str) -> ModelInfo:
    """Version, kind and labels of a registered model's served artifact, read from its files without loading torch."""
    return source_info(model_source(name))


def model_version(name: str) -> str:
    return model_info_get(name).version


def model_version_or_blank(name: str) -> str:
    """The model's version, or "" if its files can't be read now (the worker then fails the row, saying why)."""
    try:
        return model_version(name)
    except (ModelLoadError, UnknownModel, OSError) as exc:
        logger.error("model %r unavailable: %s", name, exc)
        return ""


@cache
def source_info(source: str) -> ModelInfo:
    """Version, kind and labels of any artifact (a candidate too), read once from its files."""
    return model_info(source, bundled_dir=BUNDLED_MODELS_DIR)


def registry_clear() -> None:
    """Forget loaded models and the active versions read (tests that swap MLSITE_MODELS call this)."""
    with _lock:
        _loaded.clear()
        _shadow_loaded.clear()
    source_info.cache_clear()
    active_versions_forget()
