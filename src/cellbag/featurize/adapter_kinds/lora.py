"""LoRA: a low-rank update of the fused ``attn.qkv`` projection of each ViT block."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cellbag.featurize.adapters import (
    AdapterError,
    AdapterModule,
    model_name,
    register_adapter,
    vit_blocks,
)


@register_adapter("lora")
@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the fused qkv projection: ``W x + (alpha / rank) * B A x`` per target."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "v")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 1:
            raise AdapterError(f"lora: rank must be >= 1, got {self.rank}")
        bad = [t for t in self.targets if t not in ("q", "k", "v")]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise AdapterError(f"lora: targets must be distinct among q, k, v; got {self.targets}")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"lora: dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def attach(self, model: nn.Module) -> list:
        handles = []
        for i, block in enumerate(vit_blocks(model, "lora")):
            qkv = getattr(getattr(block, "attn", None), "qkv", None)
            if not isinstance(qkv, nn.Linear):
                raise AdapterError(
                    f"lora: block {i} of {model_name(model)} has no fused attn.qkv Linear"
                )
            qkv.adapter_lora = LoraQKV(qkv.in_features, qkv.out_features, self).to(
                qkv.weight.device
            )
            handles.append(qkv.register_forward_hook(_lora_hook))
        return handles


class LoraQKV(AdapterModule):
    """Low-rank deltas for the q/k/v slices of a fused ``qkv`` Linear."""

    def __init__(self, in_features: int, out_features: int, cfg: LoraConfig) -> None:
        super().__init__()
        if out_features % 3:
            raise AdapterError(f"lora: qkv out_features {out_features} is not divisible by 3")
        self.targets = cfg.targets
        self.part = out_features // 3
        self.scaling = cfg.scaling
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        for t in cfg.targets:
            a = nn.Parameter(torch.empty(cfg.rank, in_features))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            setattr(self, f"a_{t}", a)
            setattr(self, f"b_{t}", nn.Parameter(torch.zeros(self.part, cfg.rank)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        parts = []
        for t in ("q", "k", "v"):
            if t in self.targets:
                a, b = getattr(self, f"a_{t}"), getattr(self, f"b_{t}")
                parts.append((x @ a.t().to(x.dtype)) @ b.t().to(x.dtype) * self.scaling)
            else:
                parts.append(x.new_zeros(*x.shape[:-1], self.part))
        return torch.cat(parts, dim=-1)


def _lora_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.adapter_lora(args[0])
