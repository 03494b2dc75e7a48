"""The review loop's data (bench/review_loop.py): GoEmotions mapped to sentiment by the dataset's published grouping."""

from __future__ import annotations

import math

from bench.review_loop import goemotions_sentiment, paired_change

LABELS = ["admiration", "anger", "neutral", "surprise", "joy", "sadness"]


def test_goemotions_rows_map_to_sentiment_and_rows_of_both_or_neither_group_are_left_out(tmp_path):
    (tmp_path / "rows.tsv").write_text(
        "so proud of you\t0\ta\n"  # admiration: positive
        "this is infuriating\t1\tb\n"  # anger: negative
        "great and sad\t4,5\tc\n"  # joy and sadness: both, left out
        "the bus is late\t2\td\n"  # neutral: neither, left out
        "oh wow\t3\te\n"  # surprise is in neither group: left out
        "happy and calm\t4,2\tf\n"  # joy and neutral: positive
    )
    assert goemotions_sentiment(tmp_path / "rows.tsv", LABELS) == [
        ("so proud of you", "positive"),
        ("this is infuriating", "negative"),
        ("happy and calm", "positive"),
    ]


def test_the_paired_change_counts_the_texts_whose_answer_changed_and_its_interval_widens_with_them():
    # 100 texts: 1 gained (wrong, then right), 12 lost, 87 the same (60 right both times, 27 wrong).
    before = [False] * 1 + [True] * 12 + [True] * 60 + [False] * 27
    after = [True] * 1 + [False] * 12 + [True] * 60 + [False] * 27
    change = paired_change(before, after)
    assert (change["gained"], change["lost"], change["points"]) == (1, 12, -11.0)
    spread = 1.96 * math.sqrt(1 + 12 - 100 * 0.11**2) / 100  # the paired differences' standard error
    assert (change["low"], change["high"]) == (round(100 * (-0.11 - spread), 2), round(100 * (-0.11 + spread), 2))
    assert change["low"] < -11.0 < change["high"] < 0  # here the loss is beyond its noise
    churn = paired_change([False] * 20 + [True] * 31 + [True] * 49, [True] * 20 + [False] * 31 + [True] * 49)
    assert churn["points"] == -11.0
    assert churn["high"] - churn["low"] > change["high"] - change["low"]  # more answers changed: a wider interval
    assert churn["high"] > 0  # and this loss could be noise
    assert paired_change([True, False], [True, False]) == {
        "gained": 0,
        "lost": 0,
        "points": 0.0,
        "low": 0.0,
        "high": 0.0,
    }
