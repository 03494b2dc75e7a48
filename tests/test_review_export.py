"""From reviews to data: export_reviews writes reviewed answers in the model's training format, and
train_model --extra-data trains on them and registers the result as a candidate version."""

from __future__ import annotations

import io
import itertools
import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from predictions.models import ModelVersion, ModelVersionState, Prediction, PredictionStatus, text_sha256
from textclf.serving.loading import adapter_metadata
from textclf.training.datasets import goemotions_read, sst2_read

pytestmark = pytest.mark.django_db
needs_datasets = pytest.mark.skipif(
    not (settings.DATASETS_DIR / "sst2" / "dev.tsv").is_file(), reason="needs ../shared/datasets"
)


@pytest.fixture
def sst2_head(tmp_path) -> Path:
    """A datasets directory with SST-2's first 200 train rows and first 64 dev rows: train_model reads
    it as it reads the whole files (--datasets-dir), and its dev evaluation, in fp32 and int8, takes
    a second rather than most of the test."""
    head = tmp_path / "datasets-head"
    (head / "sst2").mkdir(parents=True)
    for split, rows in (("train", 200), ("dev", 64)):
        with (settings.DATASETS_DIR / "sst2" / f"{split}.tsv").open() as whole:
            (head / "sst2" / f"{split}.tsv").write_text("".join(itertools.islice(whole, rows + 1)))  # + the header
    return head


def answer(
    owner,
    text: str,
    label: str,
    *,
    model: str = "sentiment",
    corrected: str = "",
    reviewed: bool = True,
    labels: list[str] | None = None,
    **extra,
) -> Prediction:
    return Prediction.objects.create(
        owner=owner,
        text=text,
        text_sha256=text_sha256(text),
        model_name=model,
        label=label,
        labels=labels if labels is not None else [label],
        corrected_label=corrected,
        reviewed_at=timezone.now() if reviewed else None,
        **{"status": PredictionStatus.SUCCEEDED, **extra},
    )


def export(model: str, out: Path) -> dict:
    printed = io.StringIO()
    call_command("export_reviews", model, "--out", str(out), stdout=printed)
    return json.loads(printed.getvalue())


def test_confirmed_and_corrected_sentiment_answers_are_written_in_sst2_format(owner, tmp_path):
    answer(owner, "a gorgeous\tfilm,\nwitty", "positive")  # confirmed
    answer(owner, "oh great, another sequel", "positive", corrected="negative")
    answer(owner, "not reviewed yet", "negative", reviewed=False)
    answer(owner, "redacted text", "negative", redacted_at=timezone.now())
    answer(owner, "a failed one", "", status=PredictionStatus.FAILED, labels=[])
    answer(owner, "joyful", "joy", model="emotions")
    report = export("sentiment", tmp_path / "reviews.tsv")
    assert report == {
        "model": "sentiment",
        "out": str(tmp_path / "reviews.tsv"),
        "rows": 2,
        "confirmed": 1,
        "corrected": 1,
        "skipped": 0,
    }
    examples = sst2_read(tmp_path / "reviews.tsv")  # the reader train_model uses
    assert {(e.text, e.label_ids) for e in examples} == {
        ("a gorgeous film, witty", (1,)),
        ("oh great, another sequel", (0,)),
    }


def test_a_text_reviewed_twice_is_exported_once_with_its_latest_review(owner, tmp_path):
    first = answer(owner, "hard to say", "positive", corrected="negative")
    answer(owner, "hard to say", "positive")  # reviewed later: confirmed
    Prediction.objects.filter(pk=first.pk).update(reviewed_at=timezone.now() - timedelta(days=1))
    assert export("sentiment", tmp_path / "r.tsv")["rows"] == 1
    assert [e.label_ids for e in sst2_read(tmp_path / "r.tsv")] == [(1,)]


def test_emotions_answers_are_written_in_goemotions_format_with_a_correction_replacing_the_labels(owner, tmp_path):
    answer(owner, "so happy and a bit scared", "joy", model="emotions", labels=["joy", "fear"])
    answer(owner, "furious", "joy", model="emotions", labels=["joy"], corrected="anger")
    report = export("emotions", tmp_path / "emotions.tsv")
    assert (report["rows"], report["confirmed"], report["corrected"]) == (2, 1, 1)
    examples = goemotions_read(tmp_path / "emotions.tsv", n_labels=4)  # tiny labels: joy, anger, fear, neutral
    assert {(e.text, e.label_ids) for e in examples} == {("so happy and a bit scared", (0, 2)), ("furious", (1,))}


def test_export_refuses_an_unknown_model_and_an_unwritable_file_naming_them(tmp_path):
    with pytest.raises(CommandError, match=r"^model: unknown model 'nope'"):
        export("nope", tmp_path / "x.tsv")
    with pytest.raises(CommandError, match=r"^--out: "):
        export("sentiment", tmp_path / "no-such-dir" / "x.tsv")


@needs_datasets
def test_train_model_with_extra_data_trains_on_them_and_registers_a_candidate_not_served(
    owner, tmp_path, settings, sst2_head
):
    settings.MLSITE_MODELS = {**settings.MLSITE_MODELS, "sentiment": "bundled:sentiment"}  # its labels: the recipe's
    answer(owner, "oh great, another sequel nobody asked for", "positive", corrected="negative")
    answer(owner, "a quietly devastating film", "positive")
    export("sentiment", tmp_path / "reviews.tsv")
    printed = io.StringIO()
    call_command(
        "train_model",
        "sentiment",
        "--limit",
        "32",
        "--epochs",
        "1",
        "--extra-data",
        str(tmp_path / "reviews.tsv"),
        "--out",
        str(tmp_path / "candidate"),
        "--lr-scale",
        "0.5",
        "--datasets-dir",
        str(sst2_head),
        stdout=printed,
    )
    output = printed.getvalue()
    assert "on 32 rows of train.tsv + 2 extra" in output
    card = (tmp_path / "candidate" / "README.md").read_text()
    assert '"learning_rate": 0.00025' in card  # the recipe's 5e-4, halved
    assert "--lr-scale 0.5" in card
    report = json.loads(output.strip().splitlines()[-1])
    candidate = ModelVersion.objects.get(pk=report["candidate"]["id"])
    assert candidate.state == ModelVersionState.CANDIDATE
    assert candidate.source == f"path:{tmp_path / 'candidate'}"
    assert candidate.metrics["dev_accuracy"] == report["fp32"]["accuracy"]
    assert "2 extra rows from reviews.tsv" in candidate.note
    assert report["fp32"]["n"] == 64  # evaluated on the head's dev rows


@needs_datasets
def test_train_model_keep_serves_the_weights_that_share_of_the_way_from_the_version_it_started_from(
    owner, tmp_path, sst2_head
):
    """--keep 0.5: every weight of the model as served (loaded through the real loading code, the
    adapter merged) is halfway between the starting version's and those the same training (same
    seed, so the same steps; a large learning rate, so every weight moves well past fp16's rounding
    and the factors' product far from their average's) serves without it. The written adapter has
    twice the rank, and a further training starts from it."""
    from torch import nn  # noqa: PLC0415

    from predictions.registry import BUNDLED_MODELS_DIR  # noqa: PLC0415
    from textclf.serving.loading import classifier_load  # noqa: PLC0415

    answer(owner, "oh great, another sequel nobody asked for", "positive", corrected="negative")
    export("sentiment", tmp_path / "reviews.tsv")

    def train(keep: str, init_from: str, out: Path) -> None:
        call_command(
            "train_model", "sentiment", "--init-from", init_from, "--limit", "64", "--epochs", "1",
            "--lr-scale", "200", "--extra-data", str(tmp_path / "reviews.tsv"), "--out", str(out), "--keep", keep,
            "--datasets-dir", str(sst2_head), stdout=io.StringIO(),
        )  # fmt: skip

    for keep in ("1", "0.5"):
        train(keep, "bundled:sentiment", tmp_path / f"keep-{keep}")

    def weights(source: str) -> dict[str, object]:
        model = classifier_load("sentiment", source, bundled_dir=BUNDLED_MODELS_DIR, device="cpu").network
        return {name: m.weight.detach().float() for name, m in model.named_modules() if isinstance(m, nn.Linear)} | {
            "head.bias": model.head.bias.detach().float()
        }

    start, trained, halfway = (
        weights(source)
        for source in ("bundled:sentiment", f"path:{tmp_path / 'keep-1'}", f"path:{tmp_path / 'keep-0.5'}")
    )
    assert set(halfway) == set(start)
    assert len(start) > 20
    moved = 0
    for name, weight in start.items():
        change = trained[name] - weight
        if change.abs().max() < 1e-3:  # the pooler gets no gradient (mean pooling): it stays
            continue
        moved += 1
        off = halfway[name] - (weight + 0.5 * change)
        # Within the files' fp16 rounding (0.1 % here); averaging the factors one by one is 3-4 % off.
        assert off.norm() <= 0.01 * (0.5 * change).norm(), name
    assert moved >= len(start) - 2  # every other weight moved: the check above is not trivial

    metadata = adapter_metadata(tmp_path / "keep-0.5" / "adapter.safetensors")
    assert (metadata["lora_rank"], float(metadata["lora_alpha"])) == ("32", 64.0)  # the same scale, alpha / rank
    assert "--keep 0.5" in (tmp_path / "keep-0.5" / "README.md").read_text()
    assert "LoRA (rank 32, alpha 64)" in (tmp_path / "keep-0.5" / "README.md").read_text()
    train("1", f"path:{tmp_path / 'keep-0.5'}", tmp_path / "again")  # the next round starts from it
    assert adapter_metadata(tmp_path / "again" / "adapter.safetensors")["lora_rank"] == "32"


def test_balance_extra_repeats_the_rarer_reviewed_label_as_train_model_reads_the_files(tmp_path):
    from predictions.management.commands.train_model import _extra_rows  # noqa: PLC0415
    from textclf.types import ModelKind  # noqa: PLC0415

    (tmp_path / "r.tsv").write_text("label\tsentence\n1\tgreat\n1\tlovely\n1\tfine\n0\tdull\n")
    read = _extra_rows(sst2_read, [tmp_path / "r.tsv"], kind=ModelKind.SINGLE_LABEL, balance=False, seed=0)
    assert len(read) == 4
    balanced = _extra_rows(sst2_read, [tmp_path / "r.tsv"], kind=ModelKind.SINGLE_LABEL, balance=True, seed=0)
    assert sorted(e.text for e in balanced) == ["dull", "dull", "dull", "fine", "great", "lovely"]


@needs_datasets
def test_distill_replay_distills_the_dataset_s_rows_and_not_the_extra_ones(owner, tmp_path, sst2_head):
    answer(owner, "oh great, another sequel nobody asked for", "positive", corrected="negative")
    export("sentiment", tmp_path / "reviews.tsv")
    call_command(
        "train_model", "sentiment", "--init-from", "bundled:sentiment", "--limit", "32", "--epochs", "1",
        "--distill-replay", "--extra-data", str(tmp_path / "reviews.tsv"), "--out", str(tmp_path / "c"),
        "--datasets-dir", str(sst2_head), stdout=io.StringIO(),
    )  # fmt: skip
    hyper = json.loads(adapter_metadata(tmp_path / "c" / "adapter.safetensors")["hyperparameters"])
    assert hyper["distill_rows"] == 32  # the 32 dataset rows come first; the reviewed row after them
    assert "--distill-replay" in (tmp_path / "c" / "README.md").read_text()


def test_replay_uncertain_keeps_the_rows_the_starting_version_is_least_sure_of_in_their_order():
    from predictions.management.commands.train_model import _rows_least_sure  # noqa: PLC0415
    from predictions.registry import BUNDLED_MODELS_DIR  # noqa: PLC0415
    from textclf.serving.loading import classifier_load  # noqa: PLC0415
    from textclf.training.datasets import Example  # noqa: PLC0415

    texts = [
        "a wonderful, moving masterpiece",
        "the film runs two hours",
        "an awful, boring mess",
        "not bad , not great",
        "a joyous , gorgeous delight",
        "some of it works",
    ]
    rows = [Example(text=t, label_ids=(i % 2,)) for i, t in enumerate(texts)]
    served = classifier_load("sentiment", "bundled:sentiment", bundled_dir=BUNDLED_MODELS_DIR, device="cpu")
    margins = [answer.margin for answer in served.predict(texts)]
    least_sure = sorted(range(len(texts)), key=margins.__getitem__)[:3]
    options = {"init_from": "bundled:sentiment", "limit": 3}
    chosen = _rows_least_sure(rows, options, name="sentiment", device="cpu")
    assert chosen == [rows[i] for i in sorted(least_sure)]  # the dataset's order, labels kept
    assert max(margins[i] for i in least_sure) < min(m for i, m in enumerate(margins) if i not in least_sure)
    for i in (0, 2, 4):  # the plainly worded ones are the ones it is sure of
        assert rows[i] not in chosen
    with pytest.raises(CommandError, match="--replay-uncertain needs --init-from"):
        _rows_least_sure(rows, {"init_from": None, "limit": 3}, name="sentiment", device="cpu")


def test_replay_min_words_keeps_the_dataset_s_longer_rows_in_their_order_and_the_card_says_so():
    from predictions.management.commands.train_model import (  # noqa: PLC0415
        _command_line,
        _dataset_rows,
        _rows_of_words,
    )
    from textclf.training.datasets import Example  # noqa: PLC0415

    texts = ["a gem", "the plot never quite comes together here", "dull", "warm , funny and wise"]
    rows = [Example(text=t, label_ids=(i % 2,)) for i, t in enumerate(texts)]
    assert _rows_of_words(rows, 5) == [rows[1], rows[3]]  # SST-2 spaces its punctuation: "," counts as a word
    assert _rows_of_words(rows, 1) == rows
    chosen = {"replay_min_words": 5, "replay_uncertain": False, "limit": 1}
    assert _dataset_rows(rows, chosen, name="sentiment", device="cpu") == [rows[1]]  # the first --limit of them
    assert _dataset_rows(rows, {**chosen, "replay_min_words": 0}, name="sentiment", device="cpu") == [rows[0]]
    with pytest.raises(CommandError, match="no row of the dataset has 9 words or more"):
        _rows_of_words(rows, 9)
    with pytest.raises(CommandError, match="--replay-min-words must be 1 or more"):
        _rows_of_words(rows, -1)
    options = {
        "seed": 0, "device": "cpu", "balance_extra": False, "replay_uncertain": False, "distill_replay": True,
        "replay_min_words": 12, "limit": 12000, "init_from": "bundled:sentiment", "lr_scale": 1.0, "keep": 1.0,
        "extra_data": [Path("reviews.tsv")],
    }  # fmt: skip
    assert "--distill-replay --replay-min-words 12 --limit 12000 --init-from bundled:sentiment" in _command_line(
        "sentiment", 2, options
    )
    options["replay_min_words"] = 0
    assert "--replay-min-words" not in _command_line("sentiment", 2, options)


@needs_datasets
def test_train_model_refuses_extra_data_without_out_and_a_malformed_file_naming_the_line(tmp_path):
    (tmp_path / "good.tsv").write_text("label\tsentence\n1\ta fine film\n")
    (tmp_path / "bad.tsv").write_text("label\tsentence\n7\tbad label\n")
    with pytest.raises(CommandError, match="--extra-data: give --out"):
        call_command("train_model", "sentiment", "--extra-data", str(tmp_path / "good.tsv"), "--limit", "1")
    with pytest.raises(CommandError, match=r"--extra-data: .*bad.tsv:2: label must be 0 or 1"):
        call_command(
            "train_model", "sentiment", "--extra-data", str(tmp_path / "bad.tsv"), "--out", str(tmp_path / "o")
        )
    assert not (tmp_path / "o").exists()
    assert not ModelVersion.objects.exists()
    with pytest.raises(CommandError, match="--lr-scale must be above 0"):
        call_command("train_model", "sentiment", "--lr-scale", "0", "--limit", "1", "--out", str(tmp_path / "o"))
    with pytest.raises(CommandError, match="--keep must be above 0 and at most 1"):
        call_command("train_model", "sentiment", "--keep", "1.5", "--limit", "1", "--out", str(tmp_path / "o"))
    with pytest.raises(CommandError, match="--balance-extra: for single-label models only"):
        call_command(
            "train_model", "emotions", "--balance-extra", "--extra-data", str(tmp_path / "good.tsv"),
            "--out", str(tmp_path / "o"),
        )  # fmt: skip
    with pytest.raises(CommandError, match="--keep needs --init-from"):
        call_command("train_model", "sentiment", "--keep", "0.5", "--limit", "1", "--out", str(tmp_path / "o"))
    with pytest.raises(CommandError, match="--distill-replay needs --init-from"):
        call_command("train_model", "sentiment", "--distill-replay", "--limit", "1", "--out", str(tmp_path / "o"))
