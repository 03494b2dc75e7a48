"""The evaluate and predict commands on tiny models: output formats and clear refusals."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_evaluate_prints_accuracy_as_json_on_its_last_line_for_a_single_label_model(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("label\tsentence\n1\tgood film\n0\tbad plot\n1\tlove it\n")
    result = json.loads(run("evaluate", "sentiment", str(path)).strip().splitlines()[-1])
    assert set(result) == {"model", "version", "n", "accuracy"}
    assert result["model"] == "sentiment"
    assert result["n"] == 3
    assert len(result["version"]) == 12
    assert result["accuracy"] * 3 == pytest.approx(round(result["accuracy"] * 3), abs=1e-3)  # k of 3 right


def test_evaluate_prints_macro_and_micro_f1_for_a_multi_label_model(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("so happy\t0\ta1\nso angry\t1,3\ta2\nscared\t2\ta3\n")
    result = json.loads(run("evaluate", "emotions", str(path), "--batch-size", "2").strip().splitlines()[-1])
    assert set(result) == {"model", "version", "n", "macro_f1", "micro_f1", "top1_accuracy"}
    assert result["n"] == 3


def test_evaluate_int8_reports_the_quantized_variant(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("label\tsentence\n1\tgood film\n")
    result = json.loads(run("evaluate", "sentiment", str(path), "--int8").strip().splitlines()[-1])
    assert result["int8"] is True
    assert result["n"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("label\tsentence\n1\tok\nseven\tbad\n", "dev.tsv:3: label must be 0 or 1"),
        ("1\tjust one column and no header\n", "dev.tsv:1: expected header"),
    ],
)
def test_evaluate_names_the_line_of_a_malformed_file(tmp_path, content, message):
    path = tmp_path / "dev.tsv"
    path.write_text(content)
    with pytest.raises(CommandError, match=message):
        run("evaluate", "sentiment", str(path))


def test_evaluate_refuses_an_unknown_model_and_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="unknown model 'nope'"):
        run("evaluate", "nope", str(tmp_path / "x.tsv"))
    with pytest.raises(CommandError, match="no such file"):
        run("evaluate", "sentiment", str(tmp_path / "x.tsv"))


def test_predict_prints_label_score_and_top_scores_without_a_broker():
    lines = run("predict", "sentiment", "good film", "bad plot").strip().splitlines()
    assert len(lines) == 2
    label, score, tops, text = lines[0].split("\t")
    assert label in ("negative", "positive")
    assert 0.5 <= float(score) <= 1
    assert text == "good film"
    assert "negative=" in tops
    assert "positive=" in tops


def test_predict_json_for_a_multi_label_model_lists_labels_over_threshold():
    [line] = run("predict", "emotions", "so happy", "--json", "--top", "2").strip().splitlines()
    result = json.loads(line)
    assert result["model"] == "emotions"
    assert len(result["top"]) == 2
    assert isinstance(result["labels"], list)
