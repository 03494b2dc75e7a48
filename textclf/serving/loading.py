"""Build a TextClassifier from a source string.

Sources:
- ``bundled:NAME``   the directory NAME/ under the caller's `bundled_dir`, where an application keeps
                     the models it ships (an adapter over the base encoder);
- ``path:/dir``      a directory holding either an adapter.safetensors (written by textclf.training)
                     or a transformers *ForSequenceClassification checkpoint;
- ``hub:org/name[@revision]``  a checkpoint fetched with huggingface_hub (needs the network or a warm cache).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textclf.errors import ModelLoadError
from textclf.serving.base_encoder import base_encoder_load
from textclf.serving.checksum import file_sha256
from textclf.types import ModelKind

if TYPE_CHECKING:
    from textclf.serving.classifier import TextClassifier

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_FORMAT = "mlsite-adapter/1"
VERSION_LENGTH = 12
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def source_parse(source: str) -> tuple[str, str]:
    """'bundled:sentiment' → ('bundled', 'sentiment'); raises ValueError on an unknown scheme."""
    scheme, sep, target = source.partition(":")
    if not sep or scheme not in ("bundled", "path", "hub") or not target:
        raise ValueError(f"model source {source!r} must look like bundled:NAME, path:/dir or hub:org/name[@rev]")
    return scheme, target


def source_directory(source: str, *, bundled_dir: Path | None = None) -> Path:
    """The local directory a source reads from, fetching from the hub when needed; `bundled:NAME`
    reads `bundled_dir`/NAME, a directory the application names (this package ships no models)."""
    scheme, target = source_parse(source)
    if scheme == "bundled":
        if bundled_dir is None:
            raise ModelLoadError(f"{source}: no directory of bundled models given (bundled_dir)")
        return bundled_dir / target
    if scheme == "path":
        return Path(target).expanduser()
    repo_id, _, revision = target.partition("@")
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415 (the hub client loads only to fetch a model)

        return Path(snapshot_download(repo_id, revision=revision or None))
    except Exception as exc:  # hub unreachable, unknown repo, offline mode: all the same to the caller
        raise ModelLoadError(f"could not fetch {repo_id!r} from the Hugging Face hub: {exc}") from exc


@dataclass(frozen=True)
class ModelInfo:
    """What can be said of a model from its files alone, without torch: for the API and cache keys."""

    version: str
    kind: ModelKind
    labels: list[str]


def _weights_file(directory: Path) -> Path | None:
    return next((directory / f for f in (ADAPTER_FILE, *HF_WEIGHT_FILES) if (directory / f).is_file()), None)


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The __metadata__ of a safetensors file, read from its JSON header (no tensor is loaded)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 1024 * 1024:
            raise ModelLoadError(f"{path}: not a safetensors file")
        header = json.loads(handle.read(length))
    metadata: dict[str, str] = header.get("__metadata__") or {}
    return metadata


def model_info(source: str, *, bundled_dir: Path | None = None) -> ModelInfo:
    """Version, kind and labels of a source, from its weight file hash and metadata or config.json."""
    directory = source_directory(source, bundled_dir=bundled_dir)
    weights = _weights_file(directory) if directory.is_dir() else None
    if weights is None:
        raise ModelLoadError(f"{source}: no {ADAPTER_FILE} or {' / '.join(HF_WEIGHT_FILES)} in {directory}")
    version = file_sha256(weights)[:VERSION_LENGTH]
    if weights.name == ADAPTER_FILE:
        metadata = adapter_metadata(weights)
        return ModelInfo(version, ModelKind(metadata["kind"]), json.loads(metadata["labels"]))
    config = json.loads((directory / "config.json").read_text())
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    labels = [id2label.get(i, f"LABEL_{i}") for i in range(len(id2label) or 2)]
    multi = config.get("problem_type") == "multi_label_classification"
    return ModelInfo(version, ModelKind.MULTI_LABEL if multi else ModelKind.SINGLE_LABEL, labels)


def classifier_load(
    name: str,
    source: str,
    *,
    bundled_dir: Path | None = None,
    device: str | None = "auto",
    int8: bool = False,
    packed: bool = True,
) -> TextClassifier:
    """Load, merge adapters, move to the device and (optionally) quantize; ready for predict().

    With `packed`, a network that can (a BERT encoder) runs its texts without padding
    (textclf/serving/packed.py); other architectures, or packed=False, pad each pass."""
    directory = source_directory(source, bundled_dir=bundled_dir)
    if not directory.is_dir():
        raise ModelLoadError(f"model {name!r}: {directory} is not a directory")
    if (directory / ADAPTER_FILE).is_file():
        classifier = _adapter_load(name, directory / ADAPTER_FILE)
    else:
        classifier = _sequence_classifier_load(name, directory)
    classifier.source = source
    return _placed(classifier, device=device, int8=int8, packed=packed)


def _placed(classifier: TextClassifier, *, device: str | None, int8: bool, packed: bool) -> TextClassifier:
    from textclf.serving.classifier import device_resolve, quantize_int8  # noqa: PLC0415 (torch loads lazily: the web never imports it)

    target = device_resolve(device)
    classifier.network.eval()
    if int8:
        if target.type != "cpu":
            raise ModelLoadError("int8 dynamic quantization runs on the CPU only; set the device to cpu")
        classifier.network = quantize_int8(classifier.network)
        classifier.int8 = True
    classifier.network.to(target)
    classifier.device = target
    classifier.packed = packed and classifier.network.packable()
    return classifier


def adapter_metadata(path: Path) -> dict[str, str]:
    metadata = safetensors_metadata(path)
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ModelLoadError(f"{path} is not an {ADAPTER_FORMAT} file (format={metadata.get('format')!r})")
    return metadata


def _adapter_load(name: str, path: Path) -> TextClassifier:
    import torch  # noqa: PLC0415 (torch loads lazily: the web never imports it)
    from safetensors.torch import load_file  # noqa: PLC0415 (torch loads lazily: the web never imports it)
    from torch import nn  # noqa: PLC0415 (torch loads lazily: the web never imports it)

    from textclf.serving.classifier import MeanPooledClassifier, TextClassifier  # noqa: PLC0415 (torch loads lazily: the web never imports it)
    from textclf.serving.lora import lora_merge  # noqa: PLC0415 (torch loads lazily: the web never imports it)

    metadata = adapter_metadata(path)
    tensors = load_file(str(path))
    labels = json.loads(metadata["labels"])
    kind = ModelKind(metadata["kind"])
    tokenizer, encoder = base_encoder_load(expected_sha256=metadata["base_sha256"])
    factors = {key.removeprefix("encoder."): value for key, value in tensors.items() if key.startswith("encoder.")}
    scale = float(metadata["lora_alpha"]) / float(metadata["lora_rank"])
    lora_merge(encoder, factors, scale=scale)
    head_weight = tensors["head.weight"].float()
    head = nn.Linear(head_weight.shape[1], head_weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(head_weight)
        head.bias.copy_(tensors["head.bias"].float())
    if head.out_features != len(labels):
        raise ModelLoadError(f"{path}: head has {head.out_features} outputs for {len(labels)} labels")
    thresholds = tensors["thresholds"].float().tolist() if "thresholds" in tensors else None
    return TextClassifier(
        name=name,
        version=file_sha256(path)[:VERSION_LENGTH],
        labels=labels,
        kind=kind,
        network=MeanPooledClassifier(encoder, head),
        tokenizer=tokenizer,
        max_length=int(metadata.get("max_length", 128)),
        thresholds=thresholds,
    )


def _sequence_classifier_load(name: str, directory: Path) -> TextClassifier:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: PLC0415 (transformers loads lazily: the web never imports it)

    from textclf.serving.classifier import SequenceClassifierLogits, TextClassifier  # noqa: PLC0415 (torch loads lazily: the web never imports it)

    weights = _weights_file(directory)
    if weights is None:
        raise ModelLoadError(f"model {name!r}: no {ADAPTER_FILE} or {' / '.join(HF_WEIGHT_FILES)} in {directory}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {name!r}: cannot load {directory}: {exc}") from exc
    config = model.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    kind = ModelKind.MULTI_LABEL if config.problem_type == "multi_label_classification" else ModelKind.SINGLE_LABEL
    thresholds = None
    thresholds_file = directory / "thresholds.json"
    if kind is ModelKind.MULTI_LABEL and thresholds_file.is_file():
        by_label = json.loads(thresholds_file.read_text())
        thresholds = [float(by_label.get(label, 0.5)) for label in labels]
    # A tokenizer's model_max_length may exceed the positions the model has (or be a huge default):
    # a longer text would index past the position embeddings (on CUDA, an assert that poisons the
    # worker's device until it restarts), so truncate at whichever is smaller.
    positions = int(getattr(config, "max_position_embeddings", 512) or 512)
    max_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512, positions)
    return TextClassifier(
        name=name,
        version=file_sha256(weights)[:VERSION_LENGTH],
        labels=labels,
        kind=kind,
        network=SequenceClassifierLogits(model),
        tokenizer=tokenizer,
        max_length=max_length,
        thresholds=thresholds,
    )
