"""Which classifiers this deployment serves, and the loaded instance of each (once per process).

Settings name models by source (MLSITE_MODELS); nothing loads until a model is first used, so the
web process stays light unless it must answer the models endpoint or a cache key.
"""

from __future__ import annotations

import logging
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

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


@cache
def _classifier(name: str, source: str, device: str, int8: bool, packed: bool) -> TextClassifier:
    return classifier_load(name, source, bundled_dir=BUNDLED_MODELS_DIR, device=device, int8=int8, packed=packed)


def classifier_get(name: str) -> TextClassifier:
    """The loaded TextClassifier for a registered model name."""
    if not model_exists(name):
        raise UnknownModel(name)
    with _lock:
        device = "cpu" if settings.INFERENCE_INT8 else settings.INFERENCE_DEVICE  # int8 kernels are CPU-only
        return _classifier(
            name, settings.MLSITE_MODELS[name], device, settings.INFERENCE_INT8, settings.INFERENCE_PACKED
        )


def models_preload() -> None:
    """Load every model this worker serves now; a model that fails is logged and its rows fail with the reason later."""
    for name in served_models():
        try:
            classifier_get(name)
        except Exception:
            logger.exception("could not preload model %r", name)


def model_info_get(name: str) -> ModelInfo:
    """Version, kind and labels of a registered model, read from its files without loading torch."""
    if not model_exists(name):
        raise UnknownModel(name)
    return _info(settings.MLSITE_MODELS[name])


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
def _info(source: str) -> ModelInfo:
    return model_info(source, bundled_dir=BUNDLED_MODELS_DIR)


def registry_clear() -> None:
    """Forget loaded models (tests that swap MLSITE_MODELS call this)."""
    _classifier.cache_clear()
    _info.cache_clear()
