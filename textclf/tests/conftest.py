"""Fixtures of textclf's own tests, which run without Django: tiny random models, and the one trained model at hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from textclf.testing import TINY_EMOTION_LABELS, TINY_SENTIMENT_LABELS, tiny_bert_save

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_sentiment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert_save(tmp_path_factory.mktemp("tiny-sentiment"), labels=TINY_SENTIMENT_LABELS)


@pytest.fixture(scope="session")
def tiny_emotions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert_save(tmp_path_factory.mktemp("tiny-emotions"), labels=TINY_EMOTION_LABELS, multi_label=True)


@pytest.fixture(scope="session")
def trained_models_dir() -> Path:
    """The adapters this repository's application ships, trained by textclf.training over the real base
    encoder: read as test data where a random adapter cannot stand in (int8 keeping a trained model's answers)."""
    directory = Path(__file__).resolve().parents[2] / "predictions" / "bundled_models"
    assert (directory / "sentiment" / "adapter.safetensors").is_file(), f"no trained sentiment adapter in {directory}"
    return directory
