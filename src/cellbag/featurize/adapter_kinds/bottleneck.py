"""Houlsby bottleneck adapters after the attention and MLP sub-layers, added residually."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cellbag.featurize.adapters import (
    AdapterError,
    Bottleneck,
    embed_dim,
    model_name,
    register_adapter,
    vit_blocks,
)


@register_adapter("bottleneck")
@dataclass(frozen=True)
class BottleneckConfig:
    """Houlsby adapters after attention and MLP: ``h + up(act(down(h)))``."""

    reduction: int = 4
    hidden: int | None = None  # overrides reduction when set
    positions: tuple[str, ...] = ("attn", "mlp")

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", tuple(self.positions))
        bad = [p for p in self.positions if p not in ("attn", "mlp")]
        if bad or not self.positions:
            raise AdapterError(
                f"bottleneck: positions must be among attn, mlp; got {self.positions}"
            )
        if self.hidden is not None and self.hidden < 1 or self.reduction < 1:
            raise AdapterError("bottleneck: hidden and reduction must be >= 1")

    def attach(self, model: nn.Module) -> list:
        blocks = vit_blocks(model, "bottleneck")
        dim = embed_dim(model, blocks)
        hidden = self.hidden or max(1, dim // self.reduction)
        handles = []
        for i, block in enumerate(blocks):
            for pos in self.positions:
                sub = getattr(block, pos, None)
                if not isinstance(sub, nn.Module):
                    raise AdapterError(f"bottleneck: block {i} of {model_name(model)} has no {pos}")
                device = next(block.parameters()).device
                sub.adapter_bottleneck = Bottleneck(dim, hidden, act="gelu").to(device)
                handles.append(sub.register_forward_hook(_residual_hook))
        return handles


def _residual_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.adapter_bottleneck(output)
