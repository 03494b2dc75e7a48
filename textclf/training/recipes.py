"""How each bundled model is trained: its dataset, labels, head kind and default hyper-parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from textclf.training.datasets import Example, goemotions_read, labels_read, sst2_read
from textclf.types import ModelKind

SST2_LABELS = ["negative", "positive"]


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: ModelKind
    dataset: str
    defaults: dict[str, int | float] = field(default_factory=dict)

    def labels(self, datasets_dir: Path) -> list[str]:
        if self.dataset == "sst2":
            return list(SST2_LABELS)
        return labels_read(datasets_dir / self.dataset / "labels.txt")

    def reader(self, datasets_dir: Path) -> Callable[[Path], list[Example]]:
        return dataset_reader(self.kind, n_labels=len(self.labels(datasets_dir)))

    def split(self, datasets_dir: Path, split: str) -> Path:
        return datasets_dir / self.dataset / f"{split}.tsv"


def dataset_reader(kind: ModelKind, *, n_labels: int) -> Callable[[Path], list[Example]]:
    """Single-label models read the SST-2 format, multi-label models the GoEmotions format."""
    if kind is ModelKind.SINGLE_LABEL:
        return sst2_read
    return lambda path: goemotions_read(path, n_labels=n_labels)


RECIPES = {
    "sentiment": Recipe("sentiment", ModelKind.SINGLE_LABEL, "sst2", {"epochs": 2}),
    "emotions": Recipe("emotions", ModelKind.MULTI_LABEL, "goemotions", {"epochs": 2, "head_learning_rate": 2e-3}),
}
