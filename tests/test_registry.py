"""The registry: the directory `bundled:` sources read, and the setting that turns packing off."""

from __future__ import annotations

import pytest

from predictions.registry import BUNDLED_MODELS_DIR, classifier_get, model_info_get, registry_clear

pytestmark = pytest.mark.django_db  # the registry reads which model versions are active


@pytest.fixture
def fresh_registry():
    registry_clear()
    yield
    registry_clear()


def test_bundled_sources_read_the_models_the_app_ships(settings, fresh_registry):
    settings.MLSITE_MODELS = {"sentiment": "bundled:sentiment", "emotions": "bundled:emotions"}
    assert BUNDLED_MODELS_DIR.name == "bundled_models"
    assert BUNDLED_MODELS_DIR.parent.name == "predictions"
    sentiment, emotions = model_info_get("sentiment"), model_info_get("emotions")
    assert sentiment.labels == ["negative", "positive"]
    assert sentiment.kind.value == "single_label"
    assert emotions.kind.value == "multi_label"
    assert len(emotions.labels) == 28


def test_the_setting_turns_packing_off(settings, fresh_registry):
    assert classifier_get("sentiment").packed
    settings.INFERENCE_PACKED = False
    assert not classifier_get("sentiment").packed
