"""Gated attention-MIL (Ilse, Tomczak & Welling, ICML 2018)."""

from __future__ import annotations

import torch
from torch import nn

from cellbag.aggregate.registry import register_head
from cellbag.aggregate.torch_head import ClassifierOnPooled, TorchHead


class GatedAttentionPool(nn.Module):
    """a_i = softmax_i( w^T (tanh(V h_i) * sigmoid(U h_i)) ) over the real cells of a bag."""

    def __init__(self, width: int, attn_dim: int) -> None:
        super().__init__()
        self.V = nn.Linear(width, attn_dim)
        self.U = nn.Linear(width, attn_dim)
        self.w = nn.Linear(attn_dim, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
        scores = scores.masked_fill(~mask, float("-inf"))
        a = torch.softmax(scores, dim=1)
        return torch.bmm(a.unsqueeze(1), h).squeeze(1), a


class ABMIL(nn.Module):
    def __init__(self, dim: int, n_clinical: int, hidden: int, attn_dim: int, dropout: float):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.pool = GatedAttentionPool(hidden, attn_dim)
        self.classifier = ClassifierOnPooled(hidden, n_clinical, dropout)

    def forward(self, x, mask, clin, return_weights: bool = False):
        h = self.embed(x)
        z, a = self.pool(h, mask)
        return self.classifier(z, clin), a


@register_head("abmil")
class ABMILHead(TorchHead):
    """Gated attention-MIL: cells -> Linear+ReLU -> gated attention pooling -> linear on
    [pooled ; clinical]. ``cell_weights`` are the attention weights. Dropout acts on the
    pooled vector only (per-cell dropout cost a quarter of the training time on CPU)."""

    has_cell_weights = True

    def __init__(
        self,
        clinical: bool = True,
        seed: int = 0,
        hidden: int = 64,
        attn_dim: int = 32,
        dropout: float = 0.1,
        **train,
    ) -> None:
        super().__init__(clinical=clinical, seed=seed, **train)
        self.hidden = hidden
        self.attn_dim = attn_dim
        self.dropout = dropout

    def build_module(self, dim: int, n_clinical: int) -> nn.Module:
        return ABMIL(dim, n_clinical, self.hidden, self.attn_dim, self.dropout)
