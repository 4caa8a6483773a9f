"""Visual prompt tuning: learnable tokens inserted after the prefix tokens before the
first block (``shallow``) or every block (``deep``), removed after the last block."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cellbag.featurize.adapters import (
    AdapterError,
    AdapterModule,
    embed_dim,
    model_name,
    register_adapter,
    vit_blocks,
)


@register_adapter("prompt")
@dataclass(frozen=True)
class PromptConfig:
    """Visual prompt tuning: ``tokens`` prompts, ``shallow`` (first block) or ``deep``."""

    tokens: int = 8
    mode: str = "shallow"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise AdapterError(f"prompt: tokens must be >= 1, got {self.tokens}")
        if self.mode not in ("shallow", "deep"):
            raise AdapterError(f"prompt: mode must be 'shallow' or 'deep', got {self.mode!r}")

    def attach(self, model: nn.Module) -> list:
        blocks = vit_blocks(model, "prompt")
        npt = getattr(model, "num_prefix_tokens", None)
        if not isinstance(npt, int):
            raise AdapterError(f"prompt: {model_name(model)} does not say its num_prefix_tokens")
        dim = embed_dim(model, blocks)
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", (16, 16))
        area = int(patch[0] * patch[1]) if isinstance(patch, (tuple, list)) else int(patch) ** 2
        device = next(model.parameters()).device
        handles = []
        for i, block in enumerate(blocks):
            block._cellbag_prefix = npt
            if i == 0 or self.mode == "deep":
                block.adapter_prompt = Prompts(self.tokens, dim, area, self.dropout).to(device)
                hook = _prompt_insert_hook if i == 0 else _prompt_replace_hook
                handles.append(block.register_forward_pre_hook(hook))
        blocks[-1]._cellbag_prompt_tokens = self.tokens
        handles.append(blocks[-1].register_forward_hook(_prompt_remove_hook))
        return handles


class Prompts(AdapterModule):
    """Prompt tokens ``(tokens, dim)`` inserted before one block."""

    def __init__(self, tokens: int, dim: int, patch_area: int, dropout: float) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(tokens, dim))
        val = math.sqrt(6.0 / float(3 * patch_area + dim))  # VPT's xavier-style init
        nn.init.uniform_(self.tokens, -val, val)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.dropout(self.tokens).to(dtype).unsqueeze(0).expand(batch, -1, -1)


def _prompt_insert_hook(block: nn.Module, args: tuple) -> tuple:
    x, npt = args[0], block._cellbag_prefix
    p = block.adapter_prompt(x.shape[0], x.dtype)
    return (torch.cat([x[:, :npt], p, x[:, npt:]], dim=1), *args[1:])


def _prompt_replace_hook(block: nn.Module, args: tuple) -> tuple:
    x, npt = args[0], block._cellbag_prefix
    p = block.adapter_prompt(x.shape[0], x.dtype)
    return (torch.cat([x[:, :npt], p, x[:, npt + p.shape[1] :]], dim=1), *args[1:])


def _prompt_remove_hook(block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    npt, n = block._cellbag_prefix, block._cellbag_prompt_tokens
    return torch.cat([output[:, :npt], output[:, npt + n :]], dim=1)
