"""Each loss term is zero when the student's outputs equal the target, positive otherwise."""

from __future__ import annotations

import pytest
import torch

from cellbag.distill import (
    DistillError,
    LossWeights,
    attention_loss,
    distillation_loss,
    embedding_loss,
    kd_loss,
    label_loss,
)
from cellbag.distill.losses import renormalise


def test_label_loss_zero_on_confident_correct_logits():
    y = torch.tensor([1.0, 0.0, 1.0])
    assert float(label_loss(torch.tensor([60.0, -60.0, 60.0]), y)) == pytest.approx(0.0, abs=1e-12)
    assert float(label_loss(torch.tensor([0.3, 0.1, -2.0]), y)) > 0.1
    # class weighting keeps the optimum at zero
    assert float(label_loss(torch.tensor([60.0, -60.0, 60.0]), y, pos_weight=3.0)) < 1e-12


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_zero_iff_student_matches_teacher(temperature):
    p = torch.tensor([0.1, 0.5, 0.93, 0.7])
    same = torch.log(p) - torch.log1p(-p)
    assert float(kd_loss(same, p, temperature)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(same + 0.5, p, temperature)) > 1e-4
    assert float(kd_loss(torch.zeros(4), p, temperature)) > 1e-3


def test_kd_loss_scales_with_t_squared():
    p = torch.tensor([0.9])
    z = torch.tensor([-1.0])
    # at high T the tempered KL shrinks like 1/T², the T² factor keeps the term's size
    assert float(kd_loss(z, p, 10.0)) == pytest.approx(float(kd_loss(z, p, 20.0)), rel=0.05)


def test_attention_loss_renormalises_the_teacher_over_sampled_cells():
    teacher = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    target = renormalise(teacher, mask)
    assert torch.allclose(target.sum(-1), torch.ones(2))
    assert torch.allclose(target[0, :3], torch.tensor([1 / 6, 2 / 6, 3 / 6]))
    assert float(target[0, 3]) == 0.0
    assert float(attention_loss(target, teacher, mask)) == pytest.approx(0.0, abs=1e-6)
    uniform = mask / mask.sum(-1, keepdim=True)
    assert float(attention_loss(uniform, teacher, mask)) > 1e-3
    # padding positions never count, whatever the student puts there
    padded = target.clone()
    padded[0, 3] = 0.9
    assert float(attention_loss(padded, teacher, mask)) == pytest.approx(0.0, abs=1e-6)


def test_embedding_loss_zero_iff_directions_match():
    t = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    assert float(embedding_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(2.5 * t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(t + torch.randn(10, 16), t)) > 1e-2


def test_distillation_loss_weights_and_switches():
    p = torch.tensor([0.8, 0.3])
    logits = torch.tensor([0.2, 0.4], requires_grad=True)
    att = torch.tensor([[0.5, 0.5], [1.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    t_att = torch.tensor([[0.9, 0.1], [1.0, 0.0]])
    emb = torch.randn(3, 4, requires_grad=True)
    t_emb = torch.randn(3, 4)
    kw = dict(
        logits=logits,
        labels=torch.tensor([1.0, 0.0]),
        teacher_probs=p,
        attention=att,
        teacher_attention=t_att,
        mask=mask,
        projected=emb,
        teacher_embeddings=t_emb,
    )
    w = LossWeights(ce=1.0, kd=0.5, att=2.0, emb=0.25, temperature=2.0)
    total, parts = distillation_loss(w, **kw)
    expect = parts["ce"] + 0.5 * parts["kd"] + 2.0 * parts["att"] + 0.25 * parts["emb"]
    assert float(total.detach()) == pytest.approx(expect, rel=1e-6)
    total.backward()
    assert logits.grad is not None and emb.grad is not None and att.grad is not None
    # a switched-off term is neither computed nor reported (its inputs may be absent)
    _, parts = distillation_loss(
        LossWeights(ce=1.0, kd=0.0, att=0.0, emb=0.0), logits=logits, labels=kw["labels"]
    )
    assert set(parts) == {"ce", "total"}


def test_bad_loss_weights_are_refused():
    with pytest.raises(DistillError, match="kd"):
        LossWeights(kd=-1.0)
    with pytest.raises(DistillError, match="temperature"):
        LossWeights(temperature=0.0)
    assert LossWeights(ce=0, kd=1, att=0, emb=0).active() == ["kd"]
