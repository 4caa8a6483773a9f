"""Bootstrap intervals, paired comparisons, thresholds and calibration (synthetic scores)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cellbag.evaluate import stats


def test_weighted_auc_matches_sklearn_on_resamples():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30), np.ones(20)].astype(int)
    p = np.round(rng.random(50) + 0.4 * y, 1)  # rounded: ties
    w = stats.resample_weights(y, 20, seed=1)
    got = stats.weighted_auc(p, y, w)
    for b in range(20):
        idx = np.repeat(np.arange(50), w[b].astype(int))
        assert got[b] == pytest.approx(roc_auc_score(y[idx], p[idx]))
    # stratified: each resample keeps the class sizes
    assert (w[:, y == 1].sum(1) == 20).all() and (w[:, y == 0].sum(1) == 30).all()


def test_interval_covers_known_auc_at_nominal_rate():
    """200 cohorts of 40 + 40 binormal scores with a known AUC: the 95% interval covers it
    in 90-98% of them."""
    d = 1.2
    true = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(40), np.ones(40)].astype(int)
    hits = 0
    for s in range(200):
        p = rng.normal(size=80) + d * y
        lo, hi = stats.interval(stats.weighted_auc(p, y, stats.resample_weights(y, 2000, s)))
        hits += lo <= true <= hi
    assert 0.90 <= hits / 200 <= 0.98, hits / 200


def _oof(pid, y, p, repeats=2):
    rows = []
    for r in range(repeats):
        for i, (a, b, c) in enumerate(zip(pid, y, p[r], strict=True)):
            rows.append((a, r, i % 3, c, b, 0.5, 0.3))
    cols = ["patient_id", "repeat", "fold", "probability", "label"]
    return pd.DataFrame(rows, columns=[*cols, "youden_threshold", "triage_threshold"])


def test_paired_comparison_and_determinism():
    rng = np.random.default_rng(2)
    n = 120
    y = (np.arange(n) % 2).astype(int)
    pid = [f"P{i}" for i in range(n)]
    good = [np.clip(0.5 + 0.35 * (y - 0.5) * 2 + rng.normal(0, 0.2, n), 0, 1) for _ in range(2)]
    noise = [rng.random(n) for _ in range(2)]
    oofs = {"good": _oof(pid, y, good), "noise": _oof(pid, y, noise)}
    figs, pairs = stats.evaluate(oofs, seed=0)
    again, pairs2 = stats.evaluate(oofs, seed=0)
    assert figs == again and pairs == pairs2  # same seed, same numbers
    other, _ = stats.evaluate(oofs, seed=1)
    lo = figs["noise"]["metrics"]["roc_auc"]["ci95_low"]
    assert other["noise"]["metrics"]["roc_auc"]["ci95_low"] != lo
    assert figs["noise"]["best"] == "good"
    auc = [p for p in pairs if p["metric"] == "roc_auc"][0]
    assert auc["verdict"] == "good beats noise" and auc["ci95_low"] > 0 and auc["p_value"] < 0.01
    # two copies of one head: the paired interval holds 0, nobody beats anybody
    _, same = stats.evaluate({"a": oofs["noise"], "b": oofs["noise"].copy()}, seed=0)
    assert all(p["verdict"] == "no difference shown" and p["difference"] == 0 for p in same)
    # the point value is that of the mean probability over repeats
    mean_p = (noise[0] + noise[1]) / 2
    assert figs["noise"]["metrics"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, mean_p))
    # triage: the call at each fold's threshold, averaged over repeats
    sens = ((noise[0] >= 0.3).astype(int) + (noise[1] >= 0.3))[y == 1].mean() / 2
    assert figs["noise"]["metrics"]["triage_sensitivity"]["value"] == pytest.approx(sens)


def test_sensitivity_threshold_is_the_conformal_quantile():
    y = np.array([1] * 39 + [0] * 20)
    p = np.r_[np.linspace(0.3, 1, 39), np.linspace(0, 0.7, 20)]
    pos = np.sort(p[y == 1])
    # n = 39 tumoral: k = floor(0.05 * 40) = 2 -> the second lowest tumoral score
    assert stats.sensitivity_threshold(y, p, 0.95) == pos[1]
    assert stats.sensitivity_threshold(y, p, 0.9) == pos[3]  # floor(0.1 * 40) = 4
    # too few tumoral patients to promise 0.95 (k = 0): everyone goes to cytometry
    assert stats.sensitivity_threshold(y[-30:], p[-30:], 0.95) == 0.0
    assert stats.sensitivity_threshold(y, p, 1.0) == 0.0


def test_conformal_triage_keeps_its_promise_on_new_patients():
    """Cuts chosen on 78 tumoral scores (the development cohort's count), checked on fresh
    draws of the same distribution: the mean sensitivity on new patients reaches the
    target, 1 - 3/79 = 0.962 in expectation; the empirical quantile's falls short of it
    (1 - 4/79 = 0.949)."""
    rng = np.random.default_rng(0)
    conformal, empirical = [], []
    for _ in range(400):
        train = rng.normal(size=78)
        y = np.ones(78, int)
        new = rng.normal(size=2000)
        conformal.append((new >= stats.sensitivity_threshold(y, train, 0.95)).mean())
        emp = np.sort(train)[::-1][int(np.ceil(0.95 * 78)) - 1]
        empirical.append((new >= emp).mean())
    assert np.mean(conformal) > 0.955 > np.mean(empirical)


@pytest.mark.parametrize("kind", ["sigmoid", "isotonic"])
def test_calibration_improves_a_miscalibrated_score(kind):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    true = np.where(y == 1, rng.beta(5, 2, 400), rng.beta(2, 5, 400))
    skewed = true**3  # far too low
    fit, test = slice(0, 200), slice(200, 400)
    cal = stats.fit_calibrator(kind, y[fit], skewed[fit])
    before = stats.patient_metrics(y[test], skewed[test], {})
    after = stats.patient_metrics(y[test], stats.apply_calibrator(cal, skewed[test]), {})
    assert after["brier"][0] < before["brier"][0] and after["ece"][0] < before["ece"][0]
    rel = stats.reliability(y, skewed)
    assert sum(b["n"] for b in rel) == 400


def test_reliability_is_sklearns_calibration_curve_and_the_ece_shares_its_bins():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p = np.r_[rng.random(290), 0.0, 0.1, 0.1, 0.5, 0.5, 0.7, 0.9, 1.0, 1.0, 1.0]
    rel = stats.reliability(y, p)
    observed, mean_p = calibration_curve(y, p, n_bins=stats.CALIBRATION_BINS)
    assert [b["observed"] for b in rel] == pytest.approx(observed.tolist())
    assert [b["mean_probability"] for b in rel] == pytest.approx(mean_p.tolist())
    assert sum(b["n"] for b in rel) == 300
    # a bin holds its upper edge (sklearn's rule): 0.1 is in the first bin, 0.5 in the fifth
    first = stats.reliability([0, 1], [0.0, 0.1])
    assert [(b["bin_low"], b["bin_high"], b["n"]) for b in first] == [(0.0, 0.1, 2)]
    assert stats.reliability([1], [0.5])[0]["bin_high"] == 0.5
    # the ECE is the patients' weighted gap over the same bins
    ece = sum(b["n"] * abs(b["mean_probability"] - b["observed"]) for b in rel) / 300
    assert stats.patient_metrics(y, p, {})["ece"][0] == pytest.approx(ece)
    assert stats.reliability([], []) == []


def test_bootstrap_is_fast_enough_to_vectorise():
    """Not a timing test: 2,000 resamples are one matrix, no Python loop per resample."""
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    w = stats.resample_weights(y, 2000, 0)
    assert w.shape == (2000, 200)
    m = stats.patient_metrics(y, np.linspace(0, 1, 200), {"": np.ones(200)}, w)
    assert all(v.shape == (2000,) for v in m.values())
