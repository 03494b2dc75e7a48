"""Turning a row of logits into label scores: softmax for single-label, sigmoid + thresholds for multi-label."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textclf.types import LabelScores, ModelKind


def logits_decode(
    logits: torch.Tensor,
    *,
    labels: Sequence[str],
    kind: ModelKind,
    thresholds: Sequence[float] | None = None,
) -> list[LabelScores]:
    """One LabelScores per row of `logits` (shape [n, len(labels)])."""
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match {len(labels)} labels")
    logits = logits.float()
    if kind is ModelKind.SINGLE_LABEL:
        probabilities = torch.softmax(logits, dim=-1)
    else:
        probabilities = torch.sigmoid(logits)
        if thresholds is None:
            thresholds = [0.5] * len(labels)
        if len(thresholds) != len(labels):
            raise ValueError(f"{len(thresholds)} thresholds for {len(labels)} labels")
        threshold_row = torch.tensor(list(thresholds), dtype=probabilities.dtype)
    results = []
    for row in probabilities.tolist():
        scores = {label: round(float(p), 6) for label, p in zip(labels, row, strict=True)}
        top = max(range(len(row)), key=row.__getitem__)
        if kind is ModelKind.SINGLE_LABEL:
            chosen = [labels[top]]
            runner_up = max((p for i, p in enumerate(row) if i != top), default=0.0)
            margin = row[top] - runner_up
        else:
            over = [i for i, p in enumerate(row) if p >= float(threshold_row[i])]
            chosen = [labels[i] for i in sorted(over, key=row.__getitem__, reverse=True)]
            margin = min(abs(p - float(threshold_row[i])) for i, p in enumerate(row))
        results.append(
            LabelScores(
                label=labels[top], score=scores[labels[top]], scores=scores, labels=chosen, margin=round(margin, 6)
            )
        )
    return results
