"""Turning logits into labels: softmax for single-label, sigmoid and per-label thresholds for multi-label."""

from __future__ import annotations

import pytest
import torch

from textclf import ModelKind
from textclf.serving.decoding import logits_decode
from textclf.training.metrics import multilabel_scores, thresholds_tune


def test_single_label_scores_are_a_softmax_and_the_top_one_is_the_label() -> None:
    [result] = logits_decode(torch.tensor([[0.0, 2.0]]), labels=["negative", "positive"], kind=ModelKind.SINGLE_LABEL)
    assert result.label == "positive"
    assert result.scores["positive"] == pytest.approx(0.880797, abs=1e-6)
    assert sum(result.scores.values()) == pytest.approx(1.0)
    assert result.labels == ["positive"]


def test_multi_label_keeps_every_label_over_its_own_threshold_best_first() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]])  # sigmoids: .881 .5 .269 .731
    [result] = logits_decode(
        logits, labels=["joy", "anger", "fear", "love"], kind=ModelKind.MULTI_LABEL, thresholds=[0.9, 0.5, 0.2, 0.7]
    )
    assert result.label == "joy"  # the top label even though it is under its threshold
    assert result.labels == ["love", "anger", "fear"]
    assert result.scores["anger"] == pytest.approx(0.5)


def test_a_multi_label_row_may_have_no_label_over_threshold() -> None:
    [result] = logits_decode(torch.tensor([[-3.0, -2.0]]), labels=["a", "b"], kind=ModelKind.MULTI_LABEL)
    assert result.label == "b"
    assert result.labels == []


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="do not match 3 labels"):
        logits_decode(torch.zeros((1, 2)), labels=["a", "b", "c"], kind=ModelKind.SINGLE_LABEL)
    with pytest.raises(ValueError, match="1 thresholds for 2 labels"):
        logits_decode(torch.zeros((1, 2)), labels=["a", "b"], kind=ModelKind.MULTI_LABEL, thresholds=[0.5])


def test_tuned_thresholds_maximise_each_labels_f1() -> None:
    probabilities = torch.tensor([[0.9, 0.2], [0.35, 0.6], [0.3, 0.1], [0.1, 0.45]])
    gold = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]]).bool()
    thresholds = thresholds_tune(probabilities, gold, grid=torch.tensor([0.25, 0.32, 0.5, 0.7]))
    assert thresholds.tolist() == pytest.approx([0.32, 0.25])
    scores = multilabel_scores(probabilities, gold, thresholds)
    assert scores["macro_f1"] == pytest.approx(1.0)
    assert scores["top1_accuracy"] == pytest.approx(0.75)


def test_a_single_label_margin_is_the_top_score_minus_the_second() -> None:
    [result] = logits_decode(
        torch.tensor([[0.0, 1.0, 0.5]]), labels=["negative", "positive", "neutral"], kind=ModelKind.SINGLE_LABEL
    )
    top, second = sorted(result.scores.values(), reverse=True)[:2]
    assert result.margin == pytest.approx(top - second, abs=2e-6)


def test_a_multi_label_margin_is_the_score_nearest_its_threshold() -> None:
    sure, unsure = torch.logit(torch.tensor(0.95)), torch.logit(torch.tensor(0.35))
    [result] = logits_decode(
        torch.tensor([[sure, unsure]]), labels=["joy", "anger"], kind=ModelKind.MULTI_LABEL, thresholds=[0.5, 0.3]
    )
    assert result.labels == ["joy", "anger"]
    assert result.margin == pytest.approx(0.05, abs=1e-5)  # anger: 0.35 against its 0.3
