"""The review loop's data (bench/review_loop.py): GoEmotions mapped to sentiment by the dataset's published grouping."""

from __future__ import annotations

from bench.review_loop import goemotions_sentiment

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
