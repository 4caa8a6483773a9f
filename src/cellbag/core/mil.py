"""Multi-instance building blocks shared by the stage-2 heads and the distilled student:
masked padding of ragged bags, gated attention pooling and the classifier on the pooled
vector. Everything works on padded batches ``x`` (B, L, D) with a ``mask`` (B, L), True
for real instances; padded positions never receive weight.
"""

from __future__ import annotations

import torch
from torch import nn


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Lmax, D) zero-padded batch and (B, Lmax) bool mask (True = real instance)."""
    lens = torch.tensor([b.shape[0] for b in bags], device=bags[0].device)
    x = nn.utils.rnn.pad_sequence(bags, batch_first=True)
    mask = torch.arange(x.shape[1], device=x.device)[None, :] < lens[:, None]
    return x, mask


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the real instances of each bag (padded positions get 0)."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real instances: (B, L, D) -> (B, D), as one batched product."""
    m = mask.to(x.dtype).unsqueeze(1)  # (B, 1, L)
    return torch.bmm(m, x).squeeze(1) / m.sum(2).clamp_min(1.0)


def masked_max(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the real instances: (B, L) -> (B,)."""
    return scores.masked_fill(~mask, float("-inf")).max(dim=1).values


def masked_logmeanexp(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Smooth maximum over the real instances, log(mean_i exp(s_i)): (B, L) -> (B,).
    Between the mean and the max of the scores; unlike the max it does not grow with the
    number of instances (a bag of n equal scores pools to that score for every n), and
    its gradient reaches every instance in proportion to softmax(s)."""
    n = mask.sum(dim=1).clamp_min(1).to(scores.dtype)
    return torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=1) - torch.log(n)


class GatedAttentionPool(nn.Module):
    """Gated attention pooling (Ilse, Tomczak & Welling, ICML 2018):
    a_i = softmax_i( w^T (tanh(V h_i) * sigmoid(U h_i)) ) over the real instances,
    pooled = sum_i a_i h_i. Returns (pooled (B, D), weights (B, L))."""

    def __init__(self, width: int, attn_dim: int) -> None:
        super().__init__()
        self.V = nn.Linear(width, attn_dim)
        self.U = nn.Linear(width, attn_dim)
        self.w = nn.Linear(attn_dim, 1)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised attention scores w^T (tanh(V h) * sigmoid(U h)), (..., L)."""
        return self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = masked_softmax(self.scores(h), mask)
        return torch.bmm(a.unsqueeze(1).to(h.dtype), h).squeeze(1), a


class ClassifierOnPooled(nn.Module):
    """Bag logit from the pooled vector (dropout, then one linear layer), plus, when the
    model has clinical inputs, a separate linear term on the clinical features:
    ``logit = w . dropout(pooled) + v . clinical + b``. Keeping the clinical term additive
    on the logit (what a clinician's logistic model does) leaves the pooling purely
    image-driven, so per-instance weights mean the same with and without clinical data.
    """

    def __init__(self, width: int, n_clinical: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, 1)
        self.clinical = nn.Linear(n_clinical, 1, bias=False) if n_clinical else None

    def forward(self, pooled: torch.Tensor, clin: torch.Tensor | None = None) -> torch.Tensor:
        z = self.out(self.drop(pooled)).squeeze(1)
        if self.clinical is not None and clin is not None:
            z = z + self.clinical(clin.to(z.dtype)).squeeze(1)
        return z
