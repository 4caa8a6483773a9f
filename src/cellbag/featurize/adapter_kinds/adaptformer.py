"""AdaptFormer: a scaled bottleneck parallel to each ViT block's MLP branch."""

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


@register_adapter("adaptformer")
@dataclass(frozen=True)
class AdaptFormerConfig:
    """Parallel adapter on the MLP branch: ``mlp(x) + scale * up(relu(down(x)))``."""

    hidden: int = 64
    scale: float = 0.1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise AdapterError(f"adaptformer: hidden must be >= 1, got {self.hidden}")

    def attach(self, model: nn.Module) -> list:
        blocks = vit_blocks(model, "adaptformer")
        dim = embed_dim(model, blocks)
        handles = []
        for i, block in enumerate(blocks):
            mlp = getattr(block, "mlp", None)
            if not isinstance(mlp, nn.Module):
                raise AdapterError(f"adaptformer: block {i} of {model_name(model)} has no mlp")
            device = next(block.parameters()).device
            mlp.adapter_adaptformer = Bottleneck(
                dim, self.hidden, act="relu", dropout=self.dropout
            ).to(device)
            mlp.adapter_adaptformer_scale = float(self.scale)
            handles.append(mlp.register_forward_hook(_parallel_hook))
        return handles


def _parallel_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.adapter_adaptformer_scale * module.adapter_adaptformer(args[0])
