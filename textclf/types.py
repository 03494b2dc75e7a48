"""Plain data types shared by serving, training and their callers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ModelKind(enum.StrEnum):
    """Single-label heads use softmax; multi-label heads use sigmoid with per-label thresholds."""

    SINGLE_LABEL = "single_label"
    MULTI_LABEL = "multi_label"


@dataclass(frozen=True)
class LabelScores:
    """The model's answer for one text."""

    label: str
    score: float
    scores: dict[str, float]
    labels: list[str] = field(default_factory=list)
    # How far the answer is from going another way: the top score minus the second (single-label),
    # the smallest distance of a score from its label's threshold (multi-label). Small is uncertain.
    margin: float | None = None
