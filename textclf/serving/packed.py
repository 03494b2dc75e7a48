"""A padding-free forward pass for BERT encoders.

A padded batch costs every text the length of the longest one: in a worker's pass of texts in
arrival order (5 SST-2 sentences), the linear layers multiply 1.37 times the real tokens: over a
quarter of their work is padding (docs/performance.md, Packed forward passes). Only attention
mixes the tokens of a sentence; every other layer works on each token alone. So the tokens of all
texts are packed into one [tokens, hidden] matrix for the linear layers, layer norms and activations
(each weight matrix is still read once per pass), and padded to [texts, longest, …] only around
attention, where a key mask keeps each text to itself.

The layers run are the encoder's own modules (LoRA-merged or int8-quantized linears included), in
the order and with the arithmetic of transformers' BertModel; tests compare the logits with the
padded forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from torch.nn import functional

if TYPE_CHECKING:
    from transformers import BertModel
    from transformers.models.bert.modeling_bert import BertLayer


def bert_packable(encoder: nn.Module) -> bool:
    """Whether `encoder` is a plain transformers BertModel (absolute positions, encoder-only), the
    architecture `bert_packed_hidden` reproduces; anything else keeps the padded forward pass."""
    try:
        from transformers import BertModel  # noqa: PLC0415 (transformers loads lazily: the web never imports it)
    except ImportError:  # pragma: no cover - requirements.txt installs it
        return False
    if type(encoder) is not BertModel:
        return False
    config = encoder.config
    return (
        not config.is_decoder
        and not getattr(config, "add_cross_attention", False)
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and config.hidden_size % config.num_attention_heads == 0
    )


@dataclass(frozen=True)
class PackedBatch:
    """Token ids of several texts laid end to end, with what it takes to find each text again."""

    ids: torch.Tensor  # [tokens]: every text's ids, one text after the other
    positions: torch.Tensor  # [tokens]: each token's position within its text
    text_index: torch.Tensor  # [tokens]: which text each token belongs to
    lengths: torch.Tensor  # [texts]
    starts: torch.Tensor  # [texts]: where each text's first token ([CLS]) is
    slots: torch.Tensor  # [tokens]: each token's place in a [texts × longest] padded layout
    key_mask: torch.Tensor | None  # [texts, 1, 1, longest]: True for real tokens; None for one text
    longest: int

    @classmethod
    def from_ids(cls, sequences: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> PackedBatch:
        if not sequences or not all(sequences):
            raise ValueError("a packed batch needs at least one text, each with at least one token")
        lengths = torch.tensor([len(s) for s in sequences])
        longest = int(lengths.max())
        text_index = torch.repeat_interleave(torch.arange(len(sequences)), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(int(lengths.sum())) - starts[text_index]
        many = len(sequences) > 1
        key_mask = (torch.arange(longest)[None, :] < lengths[:, None])[:, None, None, :] if many else None
        return cls(
            ids=torch.tensor([token for sequence in sequences for token in sequence]).to(device),
            positions=positions.to(device),
            text_index=text_index.to(device),
            lengths=lengths.to(device),
            starts=starts.to(device),
            slots=(text_index * longest + positions).to(device),
            key_mask=key_mask.to(device) if key_mask is not None else None,
            longest=longest,
        )

    @property
    def texts(self) -> int:
        return len(self.lengths)

    def padded(self, packed: torch.Tensor) -> torch.Tensor:
        """[tokens, width] → [texts, longest, width], zeros where a text is shorter."""
        if self.key_mask is None:
            return packed.unsqueeze(0)
        out = packed.new_zeros(self.texts * self.longest, packed.shape[-1])
        out[self.slots] = packed
        return out.view(self.texts, self.longest, -1)

    def unpadded(self, padded: torch.Tensor) -> torch.Tensor:
        """[texts, longest, width] → [tokens, width]: the real tokens only."""
        flat = padded.reshape(-1, padded.shape[-1])
        return flat if self.key_mask is None else flat[self.slots]

    def mean(self, packed: torch.Tensor) -> torch.Tensor:
        """[tokens, width] → [texts, width]: the mean over each text's tokens."""
        sums = packed.new_zeros(self.texts, packed.shape[-1]).index_add_(0, self.text_index, packed)
        return sums / self.lengths[:, None].to(packed.dtype)


def bert_packed_hidden(
    encoder: BertModel, batch: PackedBatch, *, between_layers: Callable[[], None] | None = None
) -> torch.Tensor:
    """The last hidden state of every real token, [tokens, hidden]: BertModel's forward pass
    (embeddings, then each layer's self-attention and feed-forward, post-norm) without padding.
    `between_layers`, if given, is called after each layer but the last: the caller may run other
    work there (a worker runs a newly queued single text) while this pass keeps its place."""
    config = encoder.config
    heads = config.num_attention_heads
    head_size = config.hidden_size // heads
    embeddings = encoder.embeddings
    hidden: torch.Tensor = (
        embeddings.word_embeddings(batch.ids)
        + embeddings.token_type_embeddings.weight[0]  # one segment: token type 0 throughout
        + embeddings.position_embeddings(batch.positions)
    )
    hidden = embeddings.LayerNorm(hidden)

    def heads_split(projected: torch.Tensor) -> torch.Tensor:  # [tokens, hidden] → [texts, heads, longest, head]
        padded = batch.padded(projected)
        return padded.view(padded.shape[0], padded.shape[1], heads, head_size).transpose(1, 2)

    layers = list(cast("Iterable[BertLayer]", encoder.encoder.layer))
    for number, layer in enumerate(layers):
        if number and between_layers is not None:
            between_layers()
        attention = layer.attention.self
        context = functional.scaled_dot_product_attention(
            heads_split(attention.query(hidden)),
            heads_split(attention.key(hidden)),
            heads_split(attention.value(hidden)),
            attn_mask=batch.key_mask,
        )
        context = batch.unpadded(context.transpose(1, 2).reshape(context.shape[0], context.shape[2], -1))
        attended = layer.attention.output
        hidden = attended.LayerNorm(attended.dense(context) + hidden)
        intermediate = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(hidden))
        hidden = layer.output.LayerNorm(layer.output.dense(intermediate) + hidden)
    return hidden
