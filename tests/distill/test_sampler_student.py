"""Bag sampler (bounded, re-drawn, seeded) and the student's building blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellbag.distill import BagSampler, DistillError, HeadConfig, StudentSpec, build_student
from cellbag.distill.student import GatedAttentionMIL


def test_sampler_bounds_bags_and_redraws_each_epoch():
    sizes = [3, 10, 50, 7, 64, 2]
    s = BagSampler(sizes, cells_per_bag=8, bags_per_step=4, seed=1)
    e0 = [pair for batch in s.epoch(0) for pair in batch]
    assert sorted(b for b, _ in e0) == list(range(len(sizes)))  # each bag once per epoch
    assert len(list(s.epoch(0))) == len(s) == 2
    for b, sub in e0:
        assert len(sub) == min(sizes[b], 8)
        assert len(np.unique(sub)) == len(sub) and sub.max() < sizes[b]
        assert np.all(np.diff(sub) > 0)
    again = [pair for batch in s.epoch(0) for pair in batch]
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(e0, again, strict=True))
    e1 = dict((b, sub) for batch in s.epoch(1) for b, sub in batch)
    assert not np.array_equal(dict(e0)[2], e1[2])  # a fresh subset of the big bag
    assert np.array_equal(e1[0], np.arange(3))  # small bags are used whole


def test_sampler_refuses_bad_input():
    with pytest.raises(DistillError, match="cells per bag"):
        BagSampler([3], cells_per_bag=0)
    with pytest.raises(DistillError, match="no cells"):
        BagSampler([3, 0])


@torch.no_grad()
def test_head_attends_across_cells_and_ignores_padding():
    torch.manual_seed(0)
    head = GatedAttentionMIL(8, 2, HeadConfig(hidden=16, attn_dim=8, dropout=0.0)).eval()
    x = torch.randn(1, 5, 8)
    clin = torch.randn(1, 2)
    mask = torch.ones(1, 5, dtype=torch.bool)
    logit, a = head(x, mask, clin)
    assert a.shape == (1, 5) and float(a.sum()) == pytest.approx(1.0, abs=1e-6)
    # the first cell's contribution depends on the others: change only cell 4
    x2 = x.clone()
    x2[0, 4] = torch.randn(8) * 3.0
    _, a2 = head(x2, mask, clin)
    assert not torch.allclose(a[0, 0], a2[0, 0])
    # padding cells (mask False) change nothing
    xp = torch.cat([x, torch.randn(1, 3, 8)], dim=1)
    mp = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    logit_p, ap = head(xp, mp, clin)
    assert torch.allclose(logit, logit_p, atol=1e-6)
    assert float(ap[0, 5:].sum()) == 0.0


@torch.no_grad()
def test_format_1_head_weights_upgrade_to_the_same_function():
    """A student saved before the head used core.mil: attention under head.V/U/w, one
    output layer on [pooled ; clinical]. Upgraded, it gives the same logits."""
    from cellbag.distill.student import upgrade_head_state

    torch.manual_seed(1)
    hidden, attn, dim, n_clin = 16, 8, 8, 2
    cfg = HeadConfig(hidden=hidden, attn_dim=attn, context=False)  # format 1 had none
    head = GatedAttentionMIL(dim, n_clin, cfg).eval()
    old = {f"head.{k}": v for k, v in head.state_dict().items() if k.startswith(("norm", "embed"))}
    for name, shape in (("V", (attn, hidden)), ("U", (attn, hidden)), ("w", (1, attn))):
        old[f"head.{name}.weight"] = torch.randn(shape)
        old[f"head.{name}.bias"] = torch.randn(shape[0])
    old["head.out.weight"] = torch.randn(1, hidden + n_clin)
    old["head.out.bias"] = torch.randn(1)
    x, clin = torch.randn(3, 5, dim), torch.randn(3, n_clin)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    # the format-1 forward pass, written out
    h = head.embed(head.norm(x))
    lin = lambda z, n: z @ old[f"head.{n}.weight"].T + old[f"head.{n}.bias"]  # noqa: E731
    scores = lin(torch.tanh(lin(h, "V")) * torch.sigmoid(lin(h, "U")), "w").squeeze(-1)
    a = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
    pooled = torch.bmm(a.unsqueeze(1), h).squeeze(1)
    want = lin(torch.cat([pooled, clin], dim=1), "out").squeeze(1)
    new = upgrade_head_state(old, hidden)
    head.load_state_dict({k[len("head.") :]: v for k, v in new.items()})
    logits, att = head(x, mask, clin)
    torch.testing.assert_close(logits, want)
    torch.testing.assert_close(att, a)


def test_sub_batches_and_checkpointing_give_the_same_embeddings_and_grads():
    spec = StudentSpec(encoder="tf_efficientnet_lite0", image_size=32, n_clinical=0)
    model, _ = build_student(spec, weights="none", seed=0)
    model.train()
    pixels = torch.randint(0, 255, (6, 32, 32, 3), dtype=torch.uint8)
    grads = []
    for chunk, ckpt in ((6, False), (2, True)):
        model.zero_grad()
        emb = model.embed_cells(pixels, chunk=chunk, grad_checkpointing=ckpt)
        emb.square().mean().backward()
        grads.append((emb.detach(), model.encoder.conv_stem.weight.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-4)
    # batch-norm layers keep their running statistics in train mode
    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)


def test_lora_student_trains_only_the_adapter_and_head():
    spec = StudentSpec(encoder="vit_tiny_patch16_224", image_size=32, n_clinical=6, teacher_dim=8)
    model, _ = build_student(spec, adapter="lora", weights="none", seed=0)
    names = [n for n, p in model.encoder.named_parameters() if p.requires_grad]
    assert names and all("adapter_" in n for n in names)
    assert model.spec.adapter["kind"] == "lora"
    assert all(p.requires_grad for p in model.head.parameters())
    assert model.projection is not None and model.projection.out_features == 8


def test_adapter_on_a_cnn_student_is_a_clear_error():
    spec = StudentSpec(encoder="tf_efficientnet_lite0", image_size=32, n_clinical=0)
    with pytest.raises(DistillError, match="tf_efficientnet_lite0"):
        build_student(spec, adapter="lora", weights="none")


def test_unknown_student_encoder_is_a_clear_error():
    with pytest.raises(DistillError, match="not_a_model"):
        build_student(StudentSpec(encoder="not_a_model", image_size=32), weights="none")


def test_trainable_blocks_freezes_the_stem_and_early_blocks():
    spec = StudentSpec(encoder="tf_efficientnet_lite0", image_size=32, n_clinical=0)
    model, _ = build_student(spec, weights="none", trainable_blocks=2)
    enc = model.encoder
    n = len(enc.blocks)
    trains = {k: p.requires_grad for k, p in enc.named_parameters()}
    assert not trains["conv_stem.weight"]
    assert not any(v for k, v in trains.items() if k.startswith(f"blocks.{n - 3}."))
    assert all(v for k, v in trains.items() if k.startswith((f"blocks.{n - 1}.", "conv_head")))
    vit, _ = build_student(
        StudentSpec(encoder="vit_tiny_patch16_224", image_size=32, n_clinical=0),
        weights="none",
        trainable_blocks=1,
    )
    names = [k for k, p in vit.encoder.named_parameters() if p.requires_grad]
    assert names and all(k.startswith(("blocks.11.", "norm.", "fc_norm.", "head")) for k in names)
    assert not vit.encoder.pos_embed.requires_grad


def test_student_spec_context_round_trip_and_older_configs():
    """New students embed each cell with its bag's context; a config saved before the
    option existed rebuilds the plain head (same weights, same keys)."""
    from cellbag.distill.student import StudentSpec

    spec = StudentSpec(n_clinical=0)
    assert spec.head.context and StudentSpec.from_dict(spec.to_dict()) == spec
    old = spec.to_dict()
    del old["head"]["context"]
    assert StudentSpec.from_dict(old).head.context is False
    plain = GatedAttentionMIL(8, 0, HeadConfig(hidden=16, attn_dim=8, context=False))
    assert not any(k.startswith("context") for k in plain.state_dict())
