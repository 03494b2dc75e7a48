"""Dataset readers name the file and line of any malformed row."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from textclf import DatasetFormatError
from textclf.training.datasets import Example, goemotions_read, labels_balanced, sst2_read


def test_sst2_rows_are_read_with_their_labels(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_text("label\tsentence\n1\ta gorgeous film\n0\tdull\n")
    assert [(e.text, e.label_ids) for e in sst2_read(path)] == [("a gorgeous film", (1,)), ("dull", (0,))]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sentence\tlabel\n1\tx\n", ":1: expected header"),
        ("label\tsentence\n1\tok\n2\tbad label\n", ":3: label must be 0 or 1"),
        ("label\tsentence\n1\tok\nno tabs here\n", ":3: expected 2 tab-separated columns"),
        ("label\tsentence\n", "no examples"),
    ],
)
def test_malformed_sst2_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DatasetFormatError, match=message):
        sst2_read(path)


def test_goemotions_rows_carry_every_label(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_text("so happy\t17,27\tabc\nangry\t2\tdef\n")
    assert [e.label_ids for e in goemotions_read(path, n_labels=28)] == [(17, 27), (2,)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ok\t1\tid\nbroken\t1\n", ":2: expected 3 tab-separated columns"),
        ("ok\tx,y\tid\n", ":1: label ids must be comma-separated integers"),
        ("ok\t28\tid\n", ":1: label id 28 outside 0..27"),
    ],
)
def test_malformed_goemotions_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DatasetFormatError, match=message):
        goemotions_read(path, n_labels=28)


def test_labels_balanced_repeats_rarer_labels_to_the_most_frequent_one_s_count() -> None:
    rows = [Example(f"p{i}", (1,)) for i in range(7)] + [Example("n0", (0,)), Example("n1", (0,)), Example("n2", (0,))]
    balanced = labels_balanced(rows, seed=3)
    assert Counter(e.label_ids for e in balanced) == {(0,): 7, (1,): 7}
    assert [e for e in balanced if e.label_ids == (1,)] == rows[:7]  # the most frequent label as it was
    negatives = Counter(e.text for e in balanced if e.label_ids == (0,))
    assert sorted(negatives.values()) == [2, 2, 3]  # each twice, then one of them once more
    assert labels_balanced(rows, seed=3) == balanced  # seeded
    assert labels_balanced([]) == []
    with pytest.raises(ValueError, match="has 2 labels"):
        labels_balanced([Example("joy and fear", (0, 2))])
