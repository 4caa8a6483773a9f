"""Gated attention-MIL (Ilse, Tomczak & Welling, ICML 2018)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cellbag.aggregate.registry import register_head
from cellbag.aggregate.torch_head import TRAIN, TorchHead, set_params_from
from cellbag.core.mil import ClassifierOnPooled, GatedAttentionPool


class ABMIL(nn.Module):
    def __init__(self, dim: int, hidden: int, attn_dim: int, dropout: float):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.pool = GatedAttentionPool(hidden, attn_dim)
        self.classifier = ClassifierOnPooled(hidden, 0, dropout)

    def forward(self, x, mask, return_weights: bool = False):
        z, a = self.pool(self.embed(x), mask)
        return self.classifier(z), a

    @torch.inference_mode()
    def leave_one_out(self, x: torch.Tensor) -> np.ndarray:
        """Logits of the bag ``x`` (n, D) without each of its cells, (n,): the attention
        pool's numerator and denominator less one cell's share (float64)."""
        h32 = self.embed(x)
        s = self.pool.scores(h32).double()
        h = h32.double()
        e = torch.exp(s - s.max())
        den = e.sum() - e
        num = (e[:, None] * h).sum(0)[None, :] - e[:, None] * h
        pooled = num / den.clamp_min(1e-300)[:, None]
        # a cell holding (nearly) all the attention: recompute its leave-one-out directly
        for j in torch.nonzero(den < 1e-9 * e.sum()).flatten().tolist():
            keep = torch.ones(len(h), dtype=torch.bool)
            keep[j] = False
            w = torch.softmax(s[keep], 0)
            pooled[j] = (w[:, None] * h[keep]).sum(0)
        out = self.classifier.out
        return (pooled @ out.weight.double().T + out.bias.double()).squeeze(-1).numpy()


@register_head("abmil")
class ABMILHead(TorchHead):
    """Gated attention-MIL: cells -> Linear+ReLU -> gated attention pooling -> linear.
    ``cell_weights`` are the attention weights. Dropout acts on the pooled vector only
    (per-cell dropout cost a quarter of the training time on CPU)."""

    has_cell_weights = True

    def __init__(
        self,
        clinical: bool = True,
        seed: int = 0,
        hidden: int = 64,
        attn_dim: int = 32,
        dropout: float = 0.1,
        epochs: int = TRAIN["epochs"],
        lr: float = TRAIN["lr"],
        weight_decay: float = TRAIN["weight_decay"],
        batch_size: int = TRAIN["batch_size"],
        patience: int = TRAIN["patience"],
        inner_folds: int = TRAIN["inner_folds"],
        val_fraction: float = TRAIN["val_fraction"],
        max_cells_train: int = TRAIN["max_cells_train"],
        instance_dropout: float = TRAIN["instance_dropout"],
        max_tokens: int = TRAIN["max_tokens"],
        pca_dim: int | None = TRAIN["pca_dim"],
    ) -> None:
        set_params_from(self, locals())

    def build_module(self, dim: int) -> nn.Module:
        return ABMIL(dim, self.hidden, self.attn_dim, self.dropout)

    def _loo_decisions(self, bag: np.ndarray) -> np.ndarray:
        x = self._tensors([bag])[0]
        return np.mean([m.leave_one_out(x) for m in self.modules_], axis=0)
