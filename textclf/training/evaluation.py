"""Scoring a loaded classifier on a labelled dataset; shared by `evaluate` and `train_model`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textclf.serving.classifier import TextClassifier
from textclf.training.datasets import Example
from textclf.training.metrics import accuracy, multilabel_scores
from textclf.types import ModelKind

# The evaluate command's JSON object: model, version, n, then the metrics.
EvaluationResult = dict[str, str | int | float]


def gold_matrix(examples: Sequence[Example], n_labels: int) -> torch.Tensor:
    gold = torch.zeros((len(examples), n_labels), dtype=torch.bool)
    for row, example in enumerate(examples):
        gold[row, list(example.label_ids)] = True
    return gold


def classifier_evaluate(
    classifier: TextClassifier, examples: Sequence[Example], *, batch_size: int = 64
) -> EvaluationResult:
    """The evaluate command's JSON: accuracy for single-label, macro/micro-F1 and top-1 for multi-label."""
    logits = classifier.logits([e.text for e in examples], batch_size=batch_size)
    result: EvaluationResult = {"model": classifier.name, "version": classifier.version, "n": len(examples)}
    if classifier.kind is ModelKind.SINGLE_LABEL:
        gold = torch.tensor([e.label_ids[0] for e in examples])
        result["accuracy"] = round(accuracy(logits.argmax(dim=1), gold), 4)
        return result
    thresholds = torch.tensor(classifier.thresholds or [0.5] * len(classifier.labels))
    scores = multilabel_scores(torch.sigmoid(logits), gold_matrix(examples, len(classifier.labels)), thresholds)
    result.update({key: round(value, 4) for key, value in scores.items()})
    return result
