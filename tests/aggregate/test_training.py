"""The neural heads' training loop: patience that grows with the epoch of the best model."""

from __future__ import annotations

import numpy as np
import pytest

from cellbag.aggregate import make_head
from cellbag.aggregate.torch_head import patience_after


@pytest.mark.parametrize(
    ("best", "want"), [(-1, 5), (0, 5), (4, 5), (5, 6), (9, 10), (14, 15), (40, 15)]
)
def test_patience_grows_with_the_best_epoch_between_its_bounds(best, want):
    assert patience_after(best, patience=15, min_patience=5) == want


def test_min_patience_at_patience_is_the_fixed_rule():
    assert {patience_after(b, 15, 15) for b in (-1, 0, 3, 30)} == {15}


def _noise_bags(n=24, seed=0):
    """Bags without signal: the validation loss is best in the first epochs."""
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    return [rng.normal(size=(int(rng.integers(4, 9)), 6)).astype(np.float32) for _ in y], y


@pytest.mark.parametrize("name", ["abmil", "maxpool", "transformer"])
def test_a_model_that_peaks_early_stops_after_min_patience(name):
    bags, y = _noise_bags()
    head = make_head(name, clinical=False, epochs=60, inner_folds=2, lr=3e-2, min_patience=5)
    head.fit(bags, y)
    assert min(head.best_epochs_) + 1 < head.patience  # a model waited less than 15
    for best, history in zip(head.best_epochs_, head.history_, strict=True):
        wait = patience_after(best, head.patience, head.min_patience)
        # it ran until ``wait`` epochs without a better loss, or to the last epoch
        assert len(history) == min(60, best + 1 + wait)
    fixed = make_head(name, clinical=False, epochs=60, inner_folds=2, lr=3e-2, min_patience=15)
    fixed.fit(bags, y)
    assert all(
        len(h) == min(60, b + 16) for b, h in zip(fixed.best_epochs_, fixed.history_, strict=True)
    )
