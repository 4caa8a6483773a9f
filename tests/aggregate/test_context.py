"""The bag context of the neural heads (``context``, abmil's default): each cell is fed as
itself and relative to its own bag's mean, so a shift shared by all of a patient's cells
(a stain or scanner shift) can cancel."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from cellbag.aggregate import Head, make_head

# small training folds learn slowly: more patience than the defaults (40 bags per model)
TRAIN = {"epochs": 80, "patience": 40, "inner_folds": 2}


def _shifted_bags(n=120, cells=30, dim=8, seed=0, offset=5.0):
    """Tumoral bags hold 2 key cells (``offset`` along dim 0 relative to their bag); every
    bag has its own shift along dim 0 (sd 3), which hides the key cells from the raw
    coordinates (an unshifted key cell sits within the spread of shifted normal ones)."""
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    bags = []
    for i in range(n):
        b = rng.standard_normal((cells, dim))
        if y[i]:
            b[:2, 0] += offset
        b[:, 0] += rng.normal(0.0, 3.0)
        bags.append(b.astype(np.float32))
    return bags, y


def test_context_rows_are_the_cell_and_the_cell_relative_to_its_bag():
    bags, y = _shifted_bags(n=12)
    head = make_head("maxpool", clinical=False, context=True, epochs=1, inner_folds=2)
    head.fit(bags, y)
    d = bags[0].shape[1]
    assert head.in_dim_ == 2 * d and head.context_std_.shape == (d,)
    x = head._tensors([bags[0]])[0].numpy()
    z = (bags[0] - head.feat_mean_) / head.feat_std_
    np.testing.assert_allclose(x[:, :d], z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x[:, d:], (z - z.mean(0)) / head.context_std_, rtol=1e-4, atol=1e-4)
    # a shift of the whole bag moves the first half only
    shifted = head._tensors([bags[0] + 5.0])[0].numpy()
    np.testing.assert_allclose(shifted[:, d:], x[:, d:], rtol=1e-4, atol=1e-4)
    assert not np.allclose(shifted[:, :d], x[:, :d])


def test_abmil_context_equals_the_widened_input():
    """abmil folds the context into its first layer; the result is that layer applied to
    the widened rows [z, (z - m) / s] (padded cells never enter a bag's mean)."""
    import torch

    from cellbag.core.mil import pad_bags

    bags, y = _shifted_bags(n=12)
    head = make_head("abmil", clinical=False, epochs=1, inner_folds=2).fit(bags, y)
    assert head.in_dim_ == bags[0].shape[1]  # the module widens, not the input
    module, sd = head.modules_[0], torch.from_numpy(head.context_std_)
    xs = head._tensors([bags[0][:7], bags[1]])
    x, mask = pad_bags(xs)
    with torch.no_grad():
        got = module.cells(x, mask)
        for j, z in enumerate(xs):
            wide = torch.cat([z, (z - z.mean(0)) / sd], dim=1)
            want = module.embed(wide)
            torch.testing.assert_close(got[j, : len(z)], want, rtol=1e-4, atol=1e-5)


def _oof_auc(name, params, bags, y):
    p = np.zeros(len(y))
    for tr, te in StratifiedKFold(3, shuffle=True, random_state=0).split(bags, y):
        head = make_head(name, clinical=False, **params).fit([bags[i] for i in tr], y[tr])
        p[te] = head.decision_function([bags[i] for i in te])
    return roc_auc_score(y, p)


def test_context_sees_key_cells_under_per_bag_shifts():
    """With per-patient shifts larger than the key cells' own offset, abmil with its bag
    context separates the bags; without it, it does markedly worse."""
    bags, y = _shifted_bags()
    with_context = _oof_auc("abmil", TRAIN, bags, y)
    without = _oof_auc("abmil", {**TRAIN, "context": False}, bags, y)
    # seeds 0-3 of this cohort gave 0.84-0.98 with the context, 0.56-0.66 without
    assert with_context >= 0.8 and with_context >= without + 0.15, (with_context, without)


@pytest.mark.parametrize("name", ["abmil", "maxpool"])
def test_context_saves_and_loads(name, tmp_path):
    bags, y = _shifted_bags(n=16)
    head = make_head(name, clinical=False, context=True, epochs=2, inner_folds=2).fit(bags, y)
    head.save(tmp_path / "h")
    again = Head.load(tmp_path / "h")
    assert again.context and again.context_std_.shape == (bags[0].shape[1],)
    np.testing.assert_allclose(again.predict_proba(bags), head.predict_proba(bags), rtol=1e-5)


def test_abmil_saved_before_the_context_loads_without_it(tmp_path):
    """A head folder written before ``context`` existed (no such parameter, no
    ``context_std`` array) loads as the plain model it was."""
    bags, y = _shifted_bags(n=16)
    head = make_head("abmil", clinical=False, context=False, epochs=2, inner_folds=2)
    head.fit(bags, y).save(tmp_path / "old")
    doc = json.loads((tmp_path / "old" / "head.json").read_text())
    del doc["params"]["context"]
    (tmp_path / "old" / "head.json").write_text(json.dumps(doc))
    again = Head.load(tmp_path / "old")
    assert again.context is False
    np.testing.assert_allclose(again.predict_proba(bags), head.predict_proba(bags), rtol=1e-5)


def test_masked_linear_is_the_layer_on_real_cells_and_zero_on_padding():
    import torch

    from cellbag.aggregate.torch_head import bag_mean, masked_linear, pack_bags
    from cellbag.core.mil import pad_bags

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 6, generator=g) for n in (3, 7, 1)]
    w, b = torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    x, mask = pad_bags(xs)
    got = masked_linear(x, mask, w, b)
    for j, z in enumerate(xs):
        torch.testing.assert_close(got[j, : len(z)], z @ w.T + b)
        assert not got[j, len(z) :].any()
    torch.testing.assert_close(masked_linear(x[:1, :3], mask[:1, :3], w, b), xs[0][None] @ w.T + b)
    # the packed cells give the padded layout's rows, the real ones only
    packed, pmask = pack_bags(xs)
    assert packed.shape == (11, 6) and torch.equal(pmask, mask)
    torch.testing.assert_close(masked_linear(packed, pmask, w, b), got)
    torch.testing.assert_close(bag_mean(packed, pmask), torch.stack([z.mean(0) for z in xs]))
    torch.testing.assert_close(bag_mean(x, mask), bag_mean(packed, pmask))


@pytest.mark.parametrize("name", ["abmil", "maxpool", "transformer"])
def test_a_bag_scores_the_same_alone_and_padded_in_a_batch(name):
    """The first layer skips the padded cells; what a bag gets does not depend on the
    other bags of its batch (nor on their lengths)."""
    import torch

    from cellbag.aggregate.torch_head import pack_bags
    from cellbag.core.mil import pad_bags

    bags, y = _shifted_bags(n=12)
    head = make_head(name, clinical=False, epochs=2, inner_folds=2).fit(bags, y)
    module = head.modules_[0]
    xs = head._tensors([bags[0][:5], bags[1], bags[2][:2]])
    x, mask = pad_bags(xs)
    with torch.no_grad():
        batched, _ = module(x, mask)
        for j, z in enumerate(xs):
            alone, _ = module(z[None], torch.ones(1, len(z), dtype=torch.bool))
            torch.testing.assert_close(batched[j], alone[0], rtol=1e-4, atol=1e-5)
        # the packed batch (what training and scoring feed) gives the padded batch's logits
        packed, _ = module(*pack_bags(xs))
        torch.testing.assert_close(packed, batched, rtol=1e-4, atol=1e-5)
