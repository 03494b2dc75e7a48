"""Loading models through the real code paths: local checkpoints, adapters, the hub, checksums."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import textclf
from textclf import ModelKind, ModelLoadError
from textclf.serving.checksum import file_sha256
from textclf.serving.loading import classifier_load, model_info, source_parse


def test_a_local_checkpoint_loads_and_answers_every_text_in_order(tiny_sentiment_dir: Path) -> None:
    classifier = classifier_load("sentiment", f"path:{tiny_sentiment_dir}", device="cpu")
    texts = ["good film", "awful boring plot and bad acting all the way", "a"]
    results = classifier.predict(texts, batch_size=2)
    assert len(results) == 3
    for result in results:
        assert set(result.scores) == {"negative", "positive"}
        assert result.label in ("negative", "positive")
        assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert result.score == max(result.scores.values())
    for text, batched in zip(texts, results, strict=True):
        assert batched.scores == pytest.approx(classifier.predict([text])[0].scores, abs=1e-4)


def test_passes_yield_each_forward_pass_as_it_runs_and_together_answer_as_predict(tiny_sentiment_dir: Path) -> None:
    classifier = classifier_load("sentiment", f"path:{tiny_sentiment_dir}", device="cpu")
    texts = ["a", "awful boring plot and bad acting all the way", "good film", "bad", "the plot"]
    passes = classifier.passes(texts, batch_size=2)
    indexes, first = next(passes)  # the first pass is answered before the next one runs
    assert len(indexes) == len(first) == 2
    seen = dict(zip(indexes, first, strict=True))
    for more, answers in passes:
        assert len(more) == len(answers) <= 2
        seen.update(zip(more, answers, strict=True))
    assert sorted(seen) == list(range(len(texts)))
    whole = classifier.predict(texts, batch_size=len(texts))
    for i, answer in seen.items():
        assert answer.label == whole[i].label
        assert answer.scores == pytest.approx(whole[i].scores, abs=1e-4)
    assert list(classifier.passes([], batch_size=2)) == []
    assert classifier.predict([]) == []


def test_a_callable_pass_size_is_asked_before_each_pass(tiny_sentiment_dir: Path) -> None:
    """A caller resizes the passes still to come (the worker, when single texts start to flow)."""
    classifier = classifier_load("sentiment", f"path:{tiny_sentiment_dir}", device="cpu")
    texts = ["a", "bad", "good film", "the plot", "good", "film", "awful boring plot"]
    sizes = iter([3, 2, 0])  # 0 still makes progress: one text a pass
    asked: list[int] = []

    def size() -> int:
        asked.append(next(sizes, 1))
        return asked[-1]

    lengths = [len(indexes) for indexes, _ in classifier.passes(texts, batch_size=size)]
    assert lengths == [3, 2, 1, 1]
    assert asked == [3, 2, 0, 1]
    answers = classifier.predict(texts, batch_size=size)
    whole = classifier.predict(texts, batch_size=len(texts))
    assert [a.label for a in answers] == [w.label for w in whole]


def test_a_tiny_model_s_tokenizer_knows_its_words_and_nothing_else(tiny_sentiment_dir: Path) -> None:
    tokenizer = classifier_load("s", f"path:{tiny_sentiment_dir}", device="cpu").tokenizer
    known, unknown = tokenizer(["Good film", "zebra"])["input_ids"]
    assert tokenizer.unk_token_id not in known
    assert len(set(known)) == 4  # [CLS] good film [SEP]
    assert unknown[1:-1] == [tokenizer.unk_token_id]


def test_the_version_is_the_weight_file_hash_and_info_needs_no_model_load(tiny_sentiment_dir: Path) -> None:
    info = model_info(f"path:{tiny_sentiment_dir}")
    assert info.version == file_sha256(tiny_sentiment_dir / "model.safetensors")[:12]
    assert info.kind is ModelKind.SINGLE_LABEL
    assert info.labels == ["negative", "positive"]
    assert classifier_load("x", f"path:{tiny_sentiment_dir}", device="cpu").version == info.version


def test_a_multi_label_checkpoint_uses_sigmoid_and_its_thresholds(tiny_emotions_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "emo"
    shutil.copytree(tiny_emotions_dir, directory)
    (directory / "thresholds.json").write_text(json.dumps({"joy": 0.0, "anger": 1.01, "fear": 1.01, "neutral": 1.01}))
    classifier = classifier_load("emotions", f"path:{directory}", device="cpu")
    assert classifier.kind is ModelKind.MULTI_LABEL
    result = classifier.predict(["happy joy"])[0]
    assert len(result.scores) == 4
    assert sum(result.scores.values()) != pytest.approx(1.0)  # independent sigmoids, not a softmax
    assert result.labels == ["joy"]  # only joy's threshold can be met


def test_a_bundled_source_reads_the_directory_the_caller_names_and_needs_one(tiny_sentiment_dir: Path) -> None:
    source = f"bundled:{tiny_sentiment_dir.name}"
    assert model_info(source, bundled_dir=tiny_sentiment_dir.parent) == model_info(f"path:{tiny_sentiment_dir}")
    assert classifier_load("s", source, bundled_dir=tiny_sentiment_dir.parent, device="cpu").source == source
    with pytest.raises(ModelLoadError, match="no directory of bundled models"):
        model_info(source)


def test_errors_types_and_model_info_cost_no_torch(tiny_sentiment_dir: Path) -> None:
    """A web process reads a model's version and labels without importing torch or transformers."""
    code = (
        "import sys, textclf, textclf.serving, textclf.serving.loading as loading; "
        f"loading.model_info({f'path:{tiny_sentiment_dir}'!r}); "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    importable_from = Path(textclf.__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=importable_from)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_hub_id_goes_through_the_hub_client_and_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not fetch 'someone/some-model' from the Hugging Face hub"):
        classifier_load("remote", "hub:someone/some-model@main", device="cpu")


def test_a_directory_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no adapter\.safetensors or model\.safetensors"):
        classifier_load("empty", f"path:{tmp_path}", device="cpu")


@pytest.mark.parametrize("source", ["sentiment", "ftp:x", "path:", "bundled"])
def test_a_malformed_source_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="must look like"):
        source_parse(source)


def test_int8_quantization_keeps_the_answers_close(tiny_sentiment_dir: Path) -> None:
    fp32 = classifier_load("s", f"path:{tiny_sentiment_dir}", device="cpu")
    int8 = classifier_load("s", f"path:{tiny_sentiment_dir}", device="cpu", int8=True)
    texts = ["good film", "bad plot"]
    assert int8.int8
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.network.modules())
    assert torch.allclose(fp32.logits(texts), int8.logits(texts), atol=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (the GPU worker image's path)")
def test_on_a_cuda_device_a_model_answers_as_on_the_cpu(tiny_sentiment_dir: Path) -> None:
    cpu = classifier_load("s", f"path:{tiny_sentiment_dir}", device="cpu")
    gpu = classifier_load("s", f"path:{tiny_sentiment_dir}", device="cuda")
    assert gpu.device.type == "cuda"
    assert classifier_load("s", f"path:{tiny_sentiment_dir}", device="auto").device.type == "cuda"
    texts = ["good film", "awful boring plot and bad acting all the way", "a"]
    assert torch.allclose(cpu.logits(texts), gpu.logits(texts, batch_size=2), atol=1e-4)
    assert [r.label for r in gpu.predict(texts)] == [r.label for r in cpu.predict(texts)]
