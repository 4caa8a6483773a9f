"""abmil's ``skip``: the attention pool with a path to the plain bag mean beside it."""

import numpy as np
import pytest
import torch

from cellbag.aggregate import make_head
from cellbag.aggregate.heads.abmil import ABMIL
from cellbag.core.mil import pad_bags

FAST = {"epochs": 3, "inner_folds": 2}


def _bags(n=16, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    bags = [
        (rng.standard_normal((int(rng.integers(4, 12)), dim)) + 0.5 * y[i]).astype(np.float32)
        for i in range(n)
    ]
    return bags, y


@pytest.mark.parametrize("skip", ["concat", "add"])
def test_skip_feeds_the_classifier_the_pool_and_the_bag_mean(skip):
    torch.manual_seed(0)
    m = ABMIL(dim=5, hidden=4, attn_dim=3, dropout=0.0, skip=skip).eval()
    assert m.classifier.out.in_features == (8 if skip == "concat" else 4)
    x, mask = pad_bags([torch.randn(3, 5), torch.randn(7, 5)])
    logits, a = m(x, mask)
    h = m.cells(x, mask)
    pooled = torch.bmm(a.unsqueeze(1), h).squeeze(1)
    mean = torch.stack([h[0, :3].mean(0), h[1, :7].mean(0)])  # padding never enters
    z = torch.cat([pooled, mean], 1) if skip == "concat" else pooled + mean
    torch.testing.assert_close(logits, m.classifier.out(z).squeeze(1))


def test_no_skip_is_the_plain_attention_model():
    torch.manual_seed(0)
    plain = ABMIL(dim=5, hidden=4, attn_dim=3, dropout=0.0)
    torch.manual_seed(0)
    same = ABMIL(dim=5, hidden=4, attn_dim=3, dropout=0.0, skip=None)
    x, mask = pad_bags([torch.randn(3, 5), torch.randn(6, 5)])
    torch.testing.assert_close(plain.eval()(x, mask)[0], same.eval()(x, mask)[0])
    with pytest.raises(ValueError, match="skip"):
        ABMIL(dim=5, hidden=4, attn_dim=3, dropout=0.0, skip="max")


def test_skip_head_saves_loads_and_explains(tmp_path, saves_loads_and_explains):
    bags, y = _bags()
    head = make_head("abmil", clinical=False, skip="concat", **FAST).fit(bags, y)
    # occlusion with a skip: the log-odds of the bag less each cell, recomputed exactly
    again = saves_loads_and_explains(head, bags, bags[1], tmp_path)
    assert again.skip == "concat"
