"""Low-rank adapters (LoRA) on the encoder's linear layers, for training.

Training wraps each target nn.Linear so only the low-rank factors learn; the factors saved by
`lora_state_dict` are what serving merges into the base weights (textclf/serving/lora.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

TARGET_SUFFIXES = ("query", "key", "value", "dense")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad = False
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped: torch.Tensor = self.dropout(x)
        update = (dropped @ self.lora_A.T) @ self.lora_B.T
        base: torch.Tensor = self.base(x)
        return base + update * self.scale


def _targets(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in TARGET_SUFFIXES
    ]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def lora_attach(model: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Freeze the model and wrap every target linear layer; returns the wrapped names."""
    for parameter in model.parameters():
        parameter.requires_grad = False
    targets = _targets(model)
    for name, base in targets:
        _set_submodule(model, name, LoRALinear(base, rank=rank, alpha=alpha, dropout=dropout))
    return [name for name, _ in targets]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter factors, keyed '<layer>.lora_A' / '<layer>.lora_B'."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.lora_A"] = module.lora_A.detach().cpu()
            state[f"{name}.lora_B"] = module.lora_B.detach().cpu()
    return state
