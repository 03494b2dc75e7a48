"""A loaded text classifier: tokenizer + network + label decoding, with length-sorted batching."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

import torch
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from textclf.serving.decoding import logits_decode
from textclf.serving.packed import PackedBatch, bert_packable, bert_packed_hidden
from textclf.types import LabelScores, ModelKind

PassSize = int | Callable[[], int]  # texts per forward pass: fixed, or asked before each pass
BetweenLayers = Callable[[], None] | None  # called between a packed pass's encoder layers

if TYPE_CHECKING:
    from transformers import BertForSequenceClassification, BertModel, PreTrainedTokenizerBase


class ClassifierNetwork(nn.Module):
    """What a TextClassifier runs: logits from padded token ids, and from a PackedBatch where packable()."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def packable(self) -> bool:
        return False

    def forward_packed(self, batch: PackedBatch, *, between_layers: BetweenLayers = None) -> torch.Tensor:
        raise NotImplementedError


class MeanPooledClassifier(ClassifierNetwork):
    """Encoder → mean over real tokens → linear head; the shape all-MiniLM-L6-v2 was trained for."""

    def __init__(self, encoder: nn.Module, head: nn.Linear, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        return logits

    def packable(self) -> bool:
        return bert_packable(self.encoder)

    def forward_packed(self, batch: PackedBatch, *, between_layers: BetweenLayers = None) -> torch.Tensor:
        """The same logits as forward(), from unpadded texts (textclf/serving/packed.py); runs only where packable()."""
        encoder = cast("BertModel", self.encoder)  # packable() checked that it is one
        hidden = bert_packed_hidden(encoder, batch, between_layers=between_layers)
        logits: torch.Tensor = self.head(self.dropout(batch.mean(hidden)))
        return logits


class SequenceClassifierLogits(ClassifierNetwork):
    """Adapts a transformers *ForSequenceClassification model to return bare logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits

    def packable(self) -> bool:
        from transformers import BertForSequenceClassification  # noqa: PLC0415 (transformers loads lazily: the web never imports it)

        model = self.model
        return (
            type(model) is BertForSequenceClassification and model.bert.pooler is not None and bert_packable(model.bert)
        )

    def forward_packed(self, batch: PackedBatch, *, between_layers: BetweenLayers = None) -> torch.Tensor:
        """BertForSequenceClassification's logits from unpadded texts: the pooler reads each [CLS]."""
        model = cast("BertForSequenceClassification", self.model)  # packable() checked it, and its pooler
        bert = model.bert
        assert bert.pooler is not None
        first_tokens = bert_packed_hidden(bert, batch, between_layers=between_layers)[batch.starts]
        logits: torch.Tensor = model.classifier(model.dropout(bert.pooler(first_tokens.unsqueeze(1))))
        return logits


def device_resolve(device: str | None) -> torch.device:
    """'auto' (or None) picks CUDA when present, else the CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


NetworkT = TypeVar("NetworkT", bound=nn.Module)


def quantize_int8(network: NetworkT) -> NetworkT:
    """Dynamic int8 quantization of every linear layer (CPU only), with one scale per output channel.

    Per-tensor scales cost the 28-label emotions model 1.5 points of macro-F1 on GoEmotions dev;
    per-channel scales keep it within 0.05 points (sentiment: within 1 point either way).
    """
    quantized: NetworkT = quantize_dynamic(network, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return quantized


@dataclass
class TextClassifier:
    """Everything needed to answer `predict(texts)`; built by `loading.classifier_load`."""

    name: str
    version: str
    labels: list[str]
    kind: ModelKind
    network: ClassifierNetwork
    tokenizer: PreTrainedTokenizerBase
    max_length: int = 128
    thresholds: list[float] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    int8: bool = False
    packed: bool = False  # run texts unpadded (network.forward_packed); set by loading when the network can
    source: str = ""

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind.value,
            "labels": list(self.labels),
            "thresholds": list(self.thresholds) if self.thresholds else None,
            "int8": self.int8,
            "packed": self.packed,
            "device": str(self.device),
        }

    def chunks(
        self, texts: Sequence[str], *, batch_size: PassSize = 64, max_tokens: int = 8192
    ) -> Iterator[tuple[list[int], list[list[int]]]]:
        """Yield (original indexes, token ids) per forward pass: texts sorted by token length, at most
        `batch_size` texts and `max_tokens` padded tokens (texts × longest) each. A callable
        `batch_size` is asked again before each pass, so a caller can change it between passes."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        start = 0
        while start < len(order):
            size = max(1, batch_size() if callable(batch_size) else batch_size)
            stop = start + 1
            while stop < len(order) and stop - start < size:
                longest = len(encoded[order[stop]])
                if longest * (stop - start + 1) > max_tokens:
                    break
                stop += 1
            indexes = order[start:stop]
            yield indexes, [encoded[i] for i in indexes]
            start = stop

    def _forward(self, sequences: list[list[int]], between_layers: BetweenLayers = None) -> torch.Tensor:
        if self.packed:
            batch = PackedBatch.from_ids(sequences, self.device)
            return self.network.forward_packed(batch, between_layers=between_layers)
        padded = self.tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
        logits: torch.Tensor = self.network(
            **{key: padded[key].to(self.device) for key in ("input_ids", "attention_mask")}
        )
        return logits

    def logits(self, texts: Sequence[str], *, batch_size: PassSize = 64, max_tokens: int = 8192) -> torch.Tensor:
        """Raw logits in input order, shape [len(texts), len(labels)]."""
        out = torch.empty((len(texts), len(self.labels)), dtype=torch.float32)
        with torch.inference_mode():
            for indexes, sequences in self.chunks(texts, batch_size=batch_size, max_tokens=max_tokens):
                out[indexes] = self._forward(sequences).float().cpu()
        return out

    def predict(self, texts: Sequence[str], *, batch_size: PassSize = 64, max_tokens: int = 8192) -> list[LabelScores]:
        """One LabelScores per text, in input order."""
        results: list[LabelScores | None] = [None] * len(texts)
        for indexes, answers in self.passes(texts, batch_size=batch_size, max_tokens=max_tokens):
            for i, answer in zip(indexes, answers, strict=True):
                results[i] = answer
        return cast("list[LabelScores]", results)

    @property
    def yields_between_layers(self) -> bool:
        """Whether `passes(between_layers=…)` calls it inside each pass: packed passes do (the layer
        loop is ours); a padded pass runs the encoder whole and never calls it."""
        return self.packed

    def passes(
        self,
        texts: Sequence[str],
        *,
        batch_size: PassSize = 64,
        max_tokens: int = 8192,
        between_layers: BetweenLayers = None,
    ) -> Iterator[tuple[list[int], list[LabelScores]]]:
        """Run the forward passes one at a time: yield (original indexes, their LabelScores) after each,
        so a caller can do other work between passes (a worker runs newly queued interactive texts)
        and size the next pass (a callable `batch_size`, as in `chunks`). Where the passes are packed,
        `between_layers` is also called between the encoder's layers of each pass: work done there
        waits for one layer, not for the whole pass."""
        if not texts:
            return
        for indexes, sequences in self.chunks(texts, batch_size=batch_size, max_tokens=max_tokens):
            with torch.inference_mode():
                logits = self._forward(sequences, between_layers).float().cpu()
            yield indexes, logits_decode(logits, labels=self.labels, kind=self.kind, thresholds=self.thresholds)
