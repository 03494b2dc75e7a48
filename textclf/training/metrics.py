"""Evaluation metrics and per-label threshold tuning, on plain tensors."""

from __future__ import annotations

import torch


def accuracy(predicted: torch.Tensor, gold: torch.Tensor) -> float:
    return float((predicted == gold).float().mean())


def f1_per_label(predicted: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """F1 of each column of boolean [n, labels] matrices; 0 where a label is never predicted nor gold."""
    predicted, gold = predicted.bool(), gold.bool()
    tp = (predicted & gold).sum(0).float()
    fp = (predicted & ~gold).sum(0).float()
    fn = (~predicted & gold).sum(0).float()
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp))


def multilabel_scores(probabilities: torch.Tensor, gold: torch.Tensor, thresholds: torch.Tensor) -> dict[str, float]:
    """macro-F1, micro-F1 and top-1 accuracy (top label among the gold ones)."""
    predicted = probabilities >= thresholds
    gold = gold.bool()
    tp = (predicted & gold).sum().float()
    fp = (predicted & ~gold).sum().float()
    fn = (~predicted & gold).sum().float()
    micro = float(2 * tp / (2 * tp + fp + fn)) if (tp + fp + fn) > 0 else 0.0
    top = probabilities.argmax(dim=1)
    top1 = float(gold[torch.arange(len(top)), top].float().mean())
    return {"macro_f1": float(f1_per_label(predicted, gold).mean()), "micro_f1": micro, "top1_accuracy": top1}


def thresholds_tune(
    probabilities: torch.Tensor, gold: torch.Tensor, *, grid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per label, the threshold on `grid` that maximises that label's F1 (ties: the lower threshold)."""
    if grid is None:
        grid = torch.arange(0.02, 0.96, 0.01)
    best_f1 = torch.full((probabilities.shape[1],), -1.0)
    best = torch.full((probabilities.shape[1],), 0.5)
    for threshold in grid.tolist():
        f1 = f1_per_label(probabilities >= threshold, gold)
        better = f1 > best_f1
        best_f1 = torch.where(better, f1, best_f1)
        best = torch.where(better, torch.full_like(best, threshold), best)
    return best
