"""The triage ceiling that ``benchmarks/lymphocytosis.py`` prints beside the cross-validated
reactive-spared figure: the share of reactive patients a single cut chosen with the labels
would spare at the target sensitivity, per repeat of the out-of-fold scores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from lymphocytosis import hindsight_spared  # noqa: E402


def oof_table(scores: list[np.ndarray], y: np.ndarray) -> pd.DataFrame:
    rows = [
        {"patient_id": f"P{i}", "repeat": r, "probability": float(s[i]), "label": int(y[i])}
        for r, s in enumerate(scores)
        for i in range(len(y))
    ]
    return pd.DataFrame(rows)


def test_ceiling_counts_the_reactive_below_the_allowed_miss():
    # 20 tumoral at 0.50..0.69; at target 0.95 one may fall below the cut, so the cut is
    # the second-lowest tumoral score (0.51); reactive scores: 7 below it, 3 above
    y = np.array([1] * 20 + [0] * 10)
    tumoral = 0.50 + 0.01 * np.arange(20)
    reactive = np.array([0.1, 0.2, 0.3, 0.4, 0.45, 0.49, 0.505, 0.51, 0.6, 0.9])
    s = np.concatenate([tumoral, reactive])
    value, lo, hi = hindsight_spared(oof_table([s], y), 0.95, resamples=200)
    assert value == pytest.approx(0.7)  # 0.51 itself is not below the cut: sent to cytometry
    assert 0.0 <= lo < hi <= 1.0  # resampled patients move the cut
    # a stricter target allows no miss: the cut is the lowest tumoral score (0.50)
    assert hindsight_spared(oof_table([s], y), 0.99, resamples=10)[0] == pytest.approx(0.6)


def test_ceiling_averages_the_repeats_and_bounds_every_cut():
    rng = np.random.default_rng(3)
    y = rng.permutation(np.arange(60) % 3 > 0).astype(int)  # 40 tumoral, 20 reactive
    scores = [y * 0.8 + rng.normal(0, 0.5, len(y)) for _ in range(3)]
    value, lo, hi = hindsight_spared(oof_table(scores, y), 0.95, resamples=300, seed=1)
    per_repeat = []
    for s in scores:
        best = 0.0
        for cut in np.unique(s):  # every cut that keeps the target sensitivity
            if np.mean(s[y == 1] >= cut) >= 0.95:
                best = max(best, float(np.mean(s[y == 0] < cut)))
        per_repeat.append(best)
    assert value == pytest.approx(np.mean(per_repeat))
    assert 0.0 <= lo < hi <= 1.0
