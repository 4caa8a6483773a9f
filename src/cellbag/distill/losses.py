"""The four terms of the distillation loss, as pure functions of tensors.

Each term is zero when the student's outputs equal their target and positive otherwise:

- :func:`label_loss`: binary cross-entropy of the student's patient logit on the label
  (optionally class-weighted);
- :func:`kd_loss`: ``T² · KL(teacher ‖ student)`` between the tempered two-class
  distributions of the teacher's soft probability and the student's logit;
- :func:`attention_loss`: ``KL(teacher ‖ student)`` between per-cell attention over the
  cells sampled from each bag (the teacher's weights renormalised over that subset);
- :func:`embedding_loss`: ``1 − cos`` between a projection of the student's cell
  embeddings and the teacher's cached embeddings of the same cells.

:func:`distillation_loss` weighs them with :class:`LossWeights` (a weight of 0 switches a
term off: it is then neither computed nor reported).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cellbag.distill.errors import DistillError

_EPS = 1e-6


@dataclass(frozen=True)
class LossWeights:
    """λ of each term; 0 switches a term off. ``temperature`` is the KD temperature T."""

    ce: float = 1.0
    kd: float = 1.0
    att: float = 0.5
    emb: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not v >= 0:
                raise DistillError(f"loss weight {k} must be >= 0, got {v}")
        if self.temperature <= 0:
            raise DistillError(f"temperature must be > 0, got {self.temperature}")

    def active(self) -> list[str]:
        """Names of the terms that are switched on."""
        return [k for k in ("ce", "kd", "att", "emb") if getattr(self, k) > 0]


def label_loss(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: float | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy of patient logits (B,) on 0/1 labels (B,)."""
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(
        logits.float(), labels.float(), pos_weight=None if pw is None else pw.float()
    )


def _two_class_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log [1 − σ(z), σ(z)] as (B, 2), computed stably."""
    return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=-1)


def kd_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """``T² · KL(teacher ‖ student)`` on patient probabilities, averaged over the batch.

    The teacher's probability is turned back into a logit, both logits are divided by
    ``T`` and compared as two-class distributions (Hinton et al. 2015).
    """
    t = float(temperature)
    p = teacher_probs.float().clamp(_EPS, 1 - _EPS)
    teacher_logits = torch.log(p) - torch.log1p(-p)
    log_q_t = _two_class_log_probs(teacher_logits / t)
    log_q_s = _two_class_log_probs(student_logits.float() / t)
    kl = (log_q_t.exp() * (log_q_t - log_q_s)).sum(-1)
    return kl.clamp_min(0.0).mean() * t * t


def renormalise(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weights (B, L) restricted to ``mask`` (True = a sampled cell) and rescaled to sum to 1."""
    w = weights.float().clamp_min(0.0) * mask
    total = w.sum(-1, keepdim=True)
    uniform = mask / mask.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(total > 0, w / total.clamp_min(1e-12), uniform)


def attention_loss(
    student_attention: torch.Tensor, teacher_weights: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``KL(teacher ‖ student)`` over the sampled cells of each bag, averaged over bags.

    ``student_attention`` (B, L) sums to 1 over the real cells (``mask``); the teacher's
    weights of the same cells are renormalised over them first.
    """
    mask = mask.bool()
    t = renormalise(teacher_weights, mask)
    s = student_attention.float().clamp_min(1e-12)
    terms = torch.where(mask & (t > 0), t * (torch.log(t.clamp_min(1e-12)) - torch.log(s)), 0.0)
    return terms.sum(-1).clamp_min(0.0).mean()


def embedding_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean ``1 − cos`` between projected student cell embeddings (N, D_t) and the
    teacher's embeddings of the same cells (N, D_t)."""
    cos = F.cosine_similarity(projected.float(), teacher.float(), dim=-1, eps=1e-8)
    return (1.0 - cos).clamp_min(0.0).mean()


def distillation_loss(
    weights: LossWeights,
    *,
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    teacher_probs: torch.Tensor | None = None,
    attention: torch.Tensor | None = None,
    teacher_attention: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    projected: torch.Tensor | None = None,
    teacher_embeddings: torch.Tensor | None = None,
    pos_weight: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the switched-on terms, and each term's (unweighted) value.

    The KD term already carries its ``T²`` factor.
    """
    total = logits.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    if weights.ce > 0:
        v = label_loss(logits, labels, pos_weight)
        total = total + weights.ce * v
        parts["ce"] = float(v.detach())
    if weights.kd > 0:
        v = kd_loss(logits, teacher_probs, weights.temperature)
        total = total + weights.kd * v
        parts["kd"] = float(v.detach())
    if weights.att > 0:
        v = attention_loss(attention, teacher_attention, mask)
        total = total + weights.att * v
        parts["att"] = float(v.detach())
    if weights.emb > 0:
        v = embedding_loss(projected, teacher_embeddings)
        total = total + weights.emb * v
        parts["emb"] = float(v.detach())
    parts["total"] = float(total.detach())
    return total, parts
