"""Bag statistics of the tree head: the PCA of wide features."""

import numpy as np

from cellbag.aggregate import features
from cellbag.aggregate.features import BagStats


def _bags(d=40, seed=0):
    rng = np.random.default_rng(seed)
    # five directions of decreasing variance over isotropic noise
    basis = np.linalg.qr(rng.standard_normal((d, 5)))[0].T
    scales = np.array([8.0, 6.0, 4.5, 3.0, 2.0])
    return [
        ((rng.standard_normal((30, 5)) * scales) @ basis + rng.standard_normal((30, d))).astype(
            np.float32
        )
        for _ in range(20)
    ]


def test_wide_features_use_a_randomized_pca_close_to_the_exact_one(monkeypatch):
    bags = _bags()
    exact = BagStats(n_components=5).fit(bags)
    monkeypatch.setattr(features, "EXACT_PCA_MAX_DIM", 10)  # 40-d counts as wide
    fast = BagStats(n_components=5).fit(bags)
    again = BagStats(n_components=5).fit(bags)
    np.testing.assert_array_equal(fast.components_, again.components_)  # seeded
    assert not np.array_equal(fast.components_, exact.components_)  # the other path
    cos = np.abs((fast.components_ * exact.components_).sum(1))
    assert cos.min() > 0.99, cos
    np.testing.assert_allclose(fast.explained_variance_, exact.explained_variance_, rtol=0.02)
    assert fast.transform(bags).shape == exact.transform(bags).shape


def test_leave_one_out_table_equals_the_table_of_each_smaller_bag():
    """lgbm's occlusion (inside an ensemble) reads the table of every bag less one cell
    from one pass; it must be what the smaller bags give, ties and 2-cell bags included."""
    from cellbag.aggregate import make_head
    from cellbag.aggregate.base import Head

    rng = np.random.default_rng(1)
    bags = _bags(d=12)[:10] + [rng.standard_normal((2, 12)).astype(np.float32)]
    tied = rng.standard_normal((7, 12)).astype(np.float32)
    bags.append(np.concatenate([tied, tied[:3]]))  # repeated cells: tied ranks
    y = np.array([0, 1] * 6)
    head = make_head("lgbm", clinical=False, n_estimators=20, n_components=4).fit(bags, y)
    for b in bags:
        smaller = [np.delete(b, i, 0) for i in range(len(b))]
        np.testing.assert_allclose(
            head.stats_.loo_transform(b), head.stats_.transform(smaller), atol=1e-6
        )
        np.testing.assert_allclose(head._loo_decisions(b), Head._loo_decisions(head, b), atol=1e-9)
