"""Readers for the two dataset formats in shared/datasets; errors name the file and line."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from textclf.errors import DatasetFormatError


@dataclass(frozen=True)
class Example:
    text: str
    label_ids: tuple[int, ...]


def sst2_read(path: Path) -> list[Example]:
    """SST-2: header 'label<TAB>sentence', label 0 (negative) or 1 (positive)."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if header != ["label", "sentence"]:
            raise DatasetFormatError(f"{path}:1: expected header 'label<TAB>sentence', got {'<TAB>'.join(header)!r}")
        for number, line in enumerate(handle, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise DatasetFormatError(f"{path}:{number}: expected 2 tab-separated columns, got {len(parts)}")
            label, sentence = parts
            if label not in ("0", "1"):
                raise DatasetFormatError(f"{path}:{number}: label must be 0 or 1, got {label!r}")
            if not sentence.strip():
                raise DatasetFormatError(f"{path}:{number}: empty sentence")
            examples.append(Example(text=sentence, label_ids=(int(label),)))
    if not examples:
        raise DatasetFormatError(f"{path}: no examples")
    return examples


def goemotions_read(path: Path, *, n_labels: int) -> list[Example]:
    """GoEmotions: no header, 'text<TAB>comma-separated label ids<TAB>comment id'."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise DatasetFormatError(f"{path}:{number}: expected 3 tab-separated columns, got {len(parts)}")
            text, ids, _comment_id = parts
            try:
                label_ids = tuple(int(i) for i in ids.split(","))
            except ValueError:
                raise DatasetFormatError(
                    f"{path}:{number}: label ids must be comma-separated integers, got {ids!r}"
                ) from None
            bad = [i for i in label_ids if not 0 <= i < n_labels]
            if bad:
                raise DatasetFormatError(f"{path}:{number}: label id {bad[0]} outside 0..{n_labels - 1}")
            examples.append(Example(text=text, label_ids=label_ids))
    if not examples:
        raise DatasetFormatError(f"{path}: no examples")
    return examples


def labels_read(path: Path) -> list[str]:
    labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise DatasetFormatError(f"{path}: no labels")
    return labels


def labels_balanced(examples: Sequence[Example], *, seed: int = 0) -> list[Example]:
    """Single-label examples with each label as often as the most frequent one: the rows of a rarer
    label repeated whole, then a seeded sample of them for the remainder. Reviewed predictions skew
    toward the labels the model got wrong; balanced, they move the model's prior less."""
    by_label: dict[tuple[int, ...], list[Example]] = {}
    for example in examples:
        if len(example.label_ids) != 1:
            raise ValueError(f"labels_balanced: {example.text[:40]!r} has {len(example.label_ids)} labels, not one")
        by_label.setdefault(example.label_ids, []).append(example)
    most = max((len(rows) for rows in by_label.values()), default=0)
    generator = random.Random(seed)
    balanced: list[Example] = []
    for _, rows in sorted(by_label.items()):
        balanced += rows * (most // len(rows)) + generator.sample(rows, most % len(rows))
    return balanced
