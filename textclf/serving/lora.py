"""Merging trained low-rank adapters (LoRA) into the encoder's linear layers at load time.

The factors are folded into the base weights (W + scale * B @ A), so inference costs exactly
what the plain encoder costs and int8 quantization sees ordinary nn.Linear layers. Training
(textclf/training/lora.py) writes the factors keyed '<layer>.lora_A' / '<layer>.lora_B'.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def lora_merge(model: nn.Module, factors: dict[str, torch.Tensor], *, scale: float) -> int:
    """Fold saved factors into the plain linear layers of a fresh encoder; returns layers merged."""
    layer_names = sorted({key.rsplit(".", 1)[0] for key in factors})
    for name in layer_names:
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"adapter targets {name!r}, which is not a linear layer")
        a = factors[f"{name}.lora_A"].to(linear.weight.dtype)
        b = factors[f"{name}.lora_B"].to(linear.weight.dtype)
        linear.weight += scale * (b @ a)
    return len(layer_names)
