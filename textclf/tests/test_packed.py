"""The padding-free forward pass (textclf/serving/packed.py) against the padded one, through
the real loading code: a bundled (trained) adapter over the real MiniLM encoder, and tiny random BERTs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NoReturn

import pytest
import torch
from transformers import BertForSequenceClassification, BertModel, DistilBertConfig, DistilBertForSequenceClassification

from textclf.serving.classifier import MeanPooledClassifier, SequenceClassifierLogits, TextClassifier
from textclf.serving.loading import classifier_load
from textclf.serving.packed import PackedBatch, bert_packed_hidden

# One word to far past max_length (truncated), so a batch pads some texts by dozens of tokens.
TEXTS = [
    "ok",
    "a gorgeous, witty film that never once talks down to its audience",
    "dull",
    "it is what it is, neither good nor bad, and the acting is fine but the plot drags " * 12,
    "the movie was not very good",
    "love it",
    "an awful, boring mess",
]


PackedAndPadded = tuple[TextClassifier, TextClassifier]


def both(name: str, source: str, *, bundled_dir: Path | None = None, int8: bool = False) -> PackedAndPadded:
    packed = classifier_load(name, source, bundled_dir=bundled_dir, device="cpu", int8=int8)
    padded = classifier_load(name, source, bundled_dir=bundled_dir, device="cpu", int8=int8, packed=False)
    assert packed.packed
    assert not padded.packed
    return packed, padded


@pytest.fixture(scope="module")
def bundled_sentiment(trained_models_dir: Path) -> PackedAndPadded:
    return both("sentiment", "bundled:sentiment", bundled_dir=trained_models_dir)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_the_bundled_model_gives_the_padded_logits_without_padding(
    bundled_sentiment: PackedAndPadded, batch_size: int
) -> None:
    packed, padded = bundled_sentiment
    expected = padded.logits(TEXTS, batch_size=batch_size)
    got = packed.logits(TEXTS, batch_size=batch_size)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    # and each text alone, so no neighbour in a batch can mask a mixed-up row
    alone = torch.cat([padded.logits([text]) for text in TEXTS])
    assert torch.allclose(got, alone, atol=1e-4)
    assert [r.label for r in packed.predict(TEXTS, batch_size=batch_size)] == [r.label for r in padded.predict(TEXTS)]


def test_the_packed_forward_pass_is_the_one_that_runs(
    bundled_sentiment: PackedAndPadded, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed, padded = bundled_sentiment
    expected = padded.logits(TEXTS)

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("the padded forward pass ran")

    monkeypatch.setattr(type(packed.network), "forward", refuse)
    assert torch.allclose(packed.logits(TEXTS), expected, atol=1e-4)


def test_every_token_gets_the_hidden_state_the_padded_encoder_gives_it(bundled_sentiment: PackedAndPadded) -> None:
    packed, _ = bundled_sentiment
    assert isinstance(packed.network, MeanPooledClassifier)
    assert isinstance(packed.network.encoder, BertModel)
    encoder = packed.network.encoder
    (_, sequences), *_ = packed.chunks(TEXTS, batch_size=len(TEXTS))
    padded = packed.tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
    with torch.inference_mode():
        expected = encoder(**padded).last_hidden_state[padded["attention_mask"].bool()]  # real tokens, in order
        got = bert_packed_hidden(encoder, PackedBatch.from_ids(sequences))
    assert len(sequences[-1]) == packed.max_length  # the truncated text is among them, at 128 tokens
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4)


def test_int8_packs_too_and_stays_close_to_fp32(bundled_sentiment: PackedAndPadded, trained_models_dir: Path) -> None:
    fp32, _ = bundled_sentiment
    packed, padded = both("sentiment", "bundled:sentiment", bundled_dir=trained_models_dir, int8=True)
    # One text has no padding: both paths quantize the same activations.
    for text in TEXTS[:3]:
        assert torch.allclose(packed.logits([text]), padded.logits([text]), atol=1e-4)
    # Batched, int8's per-pass activation scales differ (padding tokens no longer count): as close
    # to fp32 as the padded int8 is.
    for int8 in (packed, padded):
        assert [r.label for r in int8.predict(TEXTS)] == [r.label for r in fp32.predict(TEXTS)]
        probabilities = torch.softmax(int8.logits(TEXTS), dim=-1)
        assert torch.allclose(probabilities, torch.softmax(fp32.logits(TEXTS), dim=-1), atol=0.02)


@pytest.mark.parametrize("fixture", ["tiny_sentiment_dir", "tiny_emotions_dir"])
def test_a_bert_sequence_classifier_checkpoint_packs_through_its_pooler(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    directory = request.getfixturevalue(fixture)
    packed, padded = both("m", f"path:{directory}")
    for classifier in (packed, padded):  # a random tiny model's logits barely differ by text: magnify them
        network = classifier.network
        assert isinstance(network, SequenceClassifierLogits)
        assert isinstance(network.model, BertForSequenceClassification)
        with torch.no_grad():
            network.model.classifier.weight.mul_(1000)
    texts = ["good film", "awful boring plot and bad acting all the way, not good, so bad", "a", "happy joy"]
    expected = padded.logits(texts)
    assert (expected[0] - expected[1]).abs().max() > 0.01  # rows a mix-up would show
    for batch_size in (1, 4):
        assert torch.allclose(packed.logits(texts, batch_size=batch_size), expected, atol=1e-3)
    for got, want in zip(packed.predict(texts), padded.predict(texts), strict=True):
        assert got.label == want.label
        assert got.labels == want.labels
        assert got.scores == pytest.approx(want.scores, abs=1e-3)


def test_between_layers_runs_after_each_encoder_layer_but_the_last_and_other_passes_may_run_there(
    bundled_sentiment: PackedAndPadded,
) -> None:
    """A worker runs a single text between two layers of a bulk pass: the paused pass's answers, and
    the nested pass's, are those each would get alone."""
    packed, padded = bundled_sentiment
    layers = packed.network.encoder.config.num_hidden_layers  # type: ignore[union-attr]
    assert layers == 6
    assert packed.yields_between_layers
    assert not padded.yields_between_layers
    nested: list[torch.Tensor] = []
    calls = []

    def between() -> None:
        calls.append(len(nested))
        if len(calls) == 2:  # after the second layer of the first pass: another text runs whole
            nested.append(packed.logits(["a single text that could not wait"]))

    got = {
        i: answer
        for indexes, answers in packed.passes(TEXTS, batch_size=4, between_layers=between)
        for i, answer in zip(indexes, answers, strict=True)
    }
    assert len(calls) == 2 * (layers - 1)  # two passes, of 4 texts and 3, paused 5 times each
    assert calls[:3] == [0, 0, 1]  # the nested pass ran at the second pause
    for i, expected in enumerate(padded.predict(TEXTS)):
        assert got[i].label == expected.label
        assert got[i].scores == pytest.approx(expected.scores, abs=1e-4)
    assert torch.allclose(nested[0], padded.logits(["a single text that could not wait"]), atol=1e-4)
    padded_calls: list[int] = []
    list(padded.passes(TEXTS, batch_size=4, between_layers=lambda: padded_calls.append(1)))
    assert padded_calls == []  # the padded encoder runs whole: nothing can run between its layers


def test_texts_of_one_length_and_texts_past_the_position_limit(tiny_sentiment_dir: Path) -> None:
    packed, padded = both("m", f"path:{tiny_sentiment_dir}")
    assert packed.max_length == 128  # the model's 128 positions, not the tokenizer's 512
    same = ["good film", "bad plot", "dull acting"]  # 4 tokens each: a pass without padding
    assert torch.allclose(packed.logits(same), padded.logits(same), atol=1e-5)
    long = ["good " * 300, "bad"]
    assert torch.allclose(packed.logits(long), padded.logits(long), atol=1e-5)
    int8, int8_padded = both("m", f"path:{tiny_sentiment_dir}", int8=True)
    assert torch.allclose(int8.logits(["good film"]), int8_padded.logits(["good film"]), atol=1e-4)


def test_other_architectures_keep_the_padded_forward_pass(tiny_sentiment_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "distil"
    shutil.copytree(tiny_sentiment_dir, directory)
    for weights in directory.glob("model.safetensors"):
        weights.unlink()
    config = DistilBertConfig(
        vocab_size=64,
        dim=32,
        n_layers=1,
        n_heads=2,
        hidden_dim=37,
        max_position_embeddings=128,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    DistilBertForSequenceClassification(config).save_pretrained(directory)
    classifier = classifier_load("d", f"path:{directory}", device="cpu")
    assert not classifier.packed
    assert len(classifier.predict(["good film", "bad plot and awful acting"], batch_size=2)) == 2


def test_a_packed_batch_finds_every_token_again() -> None:
    batch = PackedBatch.from_ids([[5, 6, 7], [8], [9, 10]])
    assert batch.ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert batch.positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.text_index.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.starts.tolist() == [0, 3, 4]
    assert batch.key_mask is not None
    assert batch.key_mask[:, 0, 0].tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    values = torch.arange(12.0).view(6, 2)
    padded = batch.padded(values)
    assert padded.shape == (3, 3, 2)
    assert padded[1, 1:].abs().sum() == 0
    assert padded[2, 2].abs().sum() == 0  # padding stays zero
    assert torch.equal(batch.unpadded(padded), values)
    assert batch.mean(values).tolist() == [[2.0, 3.0], [6.0, 7.0], [9.0, 10.0]]
    single = PackedBatch.from_ids([[1, 2]])
    assert single.key_mask is None
    assert single.padded(values[:2]).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="at least one"):
        PackedBatch.from_ids([[1], []])
