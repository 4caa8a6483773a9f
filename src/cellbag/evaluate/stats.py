"""Statistics of patient-level predictions: bootstrap intervals, paired comparisons,
thresholds chosen from training data, and calibration.

Every figure of a cv run is computed on the pooled out-of-fold predictions averaged over
repeats (one score per patient), and its 95% interval is the 2.5th-97.5th percentile of
the same figure over stratified bootstrap resamples of the patients (each class resampled
with replacement within itself, seeded). A resample is a row of patient *counts*, so every
figure is a weighted sum and all resamples are computed at once: AUC by ranks (the
Mann-Whitney form, ties counted half), rates by matrix products. 2,000 resamples of 200
patients for five heads take well under a second (``benchmarks/stats.py``).

Decisions at a threshold chosen inside each training fold are carried per patient as a
*call rate*: the share of repeats in which the patient was called tumoral; sensitivity is
then the mean call rate of tumoral patients, so a 0/1 call per repeat averages exactly as
the probability does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from cellbag.aggregate.base import logit

#: confidence level of every interval
LEVEL = 0.95
#: bootstrap resamples of the patients (at least 2,000 for a stable 95% percentile interval)
RESAMPLES = 2000
#: bins of the reliability curve and of the expected calibration error
CALIBRATION_BINS = 10
#: default target sensitivity of the triage operating point
TRIAGE_SENSITIVITY = 0.95
#: how a run's best head is chosen: one rule for `cv`, `runs`, the report, fit's hint, distill
BEST_RULE = "the highest ROC AUC of the pooled out-of-fold predictions (ties: the first by name)"


def best_of(auc: Mapping[str, float]) -> str:
    """The best head of ``{head: ROC AUC}`` by :data:`BEST_RULE` (a missing figure ranks last)."""
    return min(auc, key=lambda h: (-float(np.nan_to_num(auc[h], nan=-np.inf)), str(h)))


# ----------------------------------------------------------------------------- resampling
def resample_weights(y: np.ndarray, n: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(n, len(y))`` counts of each patient in ``n`` stratified bootstrap resamples
    (each class drawn with replacement from itself, so every resample keeps both classes)."""
    y = np.asarray(y).astype(int)
    rng = np.random.default_rng(seed)
    w = np.zeros((n, len(y)), dtype=np.float64)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        k = len(idx)
        if k == 0:
            continue
        draws = rng.integers(0, k, size=(n, k))
        counts = np.zeros((n, k), dtype=np.float64)
        np.add.at(counts, (np.repeat(np.arange(n), k), draws.ravel()), 1.0)
        w[:, idx] = counts
    return w


def weighted_auc(score: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` against ``y`` under each row of weights ``w`` (n_resamples, n):
    the weighted share of (tumoral, reactive) pairs ranked right, ties counted half."""
    score = np.asarray(score, dtype=np.float64)
    y = np.asarray(y).astype(int)
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    uniq, group = np.unique(score, return_inverse=True)
    onehot = np.zeros((len(score), len(uniq)))
    onehot[np.arange(len(score)), group] = 1.0
    wp = (w * (y == 1)) @ onehot  # (B, G) tumoral weight per distinct score
    wn = (w * (y == 0)) @ onehot
    below = np.cumsum(wn, axis=1) - wn
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def patient_metrics(
    y: np.ndarray,
    probability: np.ndarray,
    calls: Mapping[str, np.ndarray],
    w: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every figure under each row of ``w`` (default: one row of ones, the point estimate).

    ``calls`` maps a prefix to call rates in [0, 1] per patient: ``""`` (the fixed 0.5
    threshold) gives ``balanced_accuracy, sensitivity, specificity, f1``; ``"youden_"``
    gives ``youden_*``; ``"triage_"`` gives ``triage_sensitivity`` and ``triage_spared``
    (share of reactive patients called reactive, whose cytometry could be spared).
    ``roc_auc``, ``brier`` and ``ece`` come from ``probability``."""
    y = np.asarray(y).astype(int)
    p = np.asarray(probability, dtype=np.float64)
    w = np.ones((1, len(y))) if w is None else np.atleast_2d(w)
    pos, neg = (y == 1).astype(float), (y == 0).astype(float)
    wpos, wneg, wall = w @ pos, w @ neg, w.sum(axis=1)
    out: dict[str, np.ndarray] = {"roc_auc": weighted_auc(p, y, w)}
    with np.errstate(invalid="ignore", divide="ignore"):
        for prefix, c in calls.items():
            c = np.asarray(c, dtype=np.float64)
            tp, fn = w @ (pos * c), w @ (pos * (1 - c))
            fp, tn = w @ (neg * c), w @ (neg * (1 - c))
            sens, spec = tp / wpos, tn / wneg
            if prefix == "triage_":
                out["triage_sensitivity"], out["triage_spared"] = sens, spec
                continue
            out[f"{prefix}balanced_accuracy"] = (sens + spec) / 2
            out[f"{prefix}sensitivity"], out[f"{prefix}specificity"] = sens, spec
            if prefix == "":
                out["f1"] = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        out["brier"] = (w @ (p - y) ** 2) / wall
        bins = calibration_bins(p)
        onehot = np.zeros((len(p), CALIBRATION_BINS))
        onehot[np.arange(len(p)), bins] = 1.0
        gap = (w * (p - y)) @ onehot  # per bin: sum of weight * (confidence - outcome)
        out["ece"] = np.abs(gap).sum(axis=1) / wall
    return out


# ----------------------------------------------------------------------------- summaries
def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap values (NaNs left out)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [a, 100 - a])
    return float(lo), float(hi)


def fold_spread(values: Sequence[float]) -> dict[str, float]:
    """``fold_sd`` (ddof=1), ``fold_min``, ``fold_max`` and ``n_folds`` of per-fold values:
    the spread of the folds, not an interval (folds and repeats are correlated)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return {"fold_sd": math.nan, "fold_min": math.nan, "fold_max": math.nan, "n_folds": 0}
    return {
        "fold_sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "fold_min": float(a.min()),
        "fold_max": float(a.max()),
        "n_folds": int(len(a)),
    }


def summarize(point: float, boot: np.ndarray, folds: Sequence[float] = ()) -> dict[str, float]:
    """``{value, ci95_low, ci95_high, fold_sd, fold_min, fold_max, n_folds}`` of one figure."""
    lo, hi = interval(boot)
    return {"value": float(point), "ci95_low": lo, "ci95_high": hi, **fold_spread(folds)}


def paired_difference(
    point_a: float, point_b: float, boot_a: np.ndarray, boot_b: np.ndarray
) -> dict[str, float]:
    """A - B on the same resamples: ``{difference, ci95_low, ci95_high, p_value}``; the
    two-sided p-value is twice the smaller share of resamples on either side of 0."""
    d = np.asarray(boot_a, dtype=np.float64) - np.asarray(boot_b, dtype=np.float64)
    d = d[np.isfinite(d)]
    lo, hi = interval(d)
    if len(d) == 0:
        p = math.nan
    else:
        tail = min(np.sum(d <= 0), np.sum(d >= 0))
        p = float(min(1.0, 2 * (tail + 1) / (len(d) + 1)))
    return {"difference": float(point_a - point_b), "ci95_low": lo, "ci95_high": hi, "p_value": p}


def beats(diff: Mapping[str, float]) -> int:
    """+1 when A beats B (interval above 0), -1 when B beats A, 0 when the interval holds 0."""
    lo, hi = diff.get("ci95_low", math.nan), diff.get("ci95_high", math.nan)
    if np.isfinite(lo) and lo > 0:
        return 1
    if np.isfinite(hi) and hi < 0:
        return -1
    return 0


# ----------------------------------------------------------------------------- thresholds
def sensitivity_threshold(
    y: np.ndarray, p: np.ndarray, target: float = TRIAGE_SENSITIVITY
) -> float:
    """The triage cut that keeps ``target`` sensitivity on *new* patients: the
    split-conformal quantile of the tumoral scores (Vovk et al. 2005; Angelopoulos & Bates
    2021). With ``n`` tumoral scores, the cut is the ``k``-th lowest, ``k = floor((1 -
    target) (n + 1))``: a new tumoral patient's score, exchangeable with them, falls below
    it with probability at most ``k / (n + 1) <= 1 - target``. With ``k = 0`` (too few
    tumoral patients to promise the target) every patient is sent to cytometry (cut 0).

    The empirical quantile (the highest cut with training sensitivity >= target) keeps the
    promise only on the patients it was chosen on: on the real cohort's development
    patients it gave a cross-validated sensitivity of 0.91-0.93 for a target of 0.95
    (docs/real-cohort.md). NaN without tumoral patients."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y = np.asarray(y).astype(int)
    pos = np.sort(np.asarray(p, dtype=np.float64)[y == 1])
    if len(pos) == 0:
        return math.nan
    k = math.floor((1.0 - target) * (len(pos) + 1) + 1e-9)
    return float(pos[k - 1]) if k >= 1 else 0.0


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The cut maximising sensitivity + specificity - 1 (ties: the highest cut)."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, np.asarray(p, dtype=np.float64))
    j = np.where(np.isfinite(thr), tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])


def select_thresholds(
    patient_ids: Sequence[str], y: np.ndarray, p: np.ndarray, target: float
) -> dict[str, float]:
    """``{youden, triage}`` cuts from (inner out-of-fold) predictions of training patients
    only. ``patient_ids`` name the patients whose predictions are used (what a test checks)."""
    if len(patient_ids) != len(y):
        raise ValueError("one id per prediction")
    return {"youden": youden_threshold(y, p), "triage": sensitivity_threshold(y, p, target)}


def operating_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(threshold, sensitivity, spared)`` along the ROC: at each distinct score ``t``,
    the share of tumoral patients with ``p >= t`` and of reactive ones with ``p < t``."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    t = np.unique(p)[::-1]
    sens = np.array([(p[y == 1] >= x).mean() if (y == 1).any() else np.nan for x in t])
    spared = np.array([(p[y == 0] < x).mean() if (y == 0).any() else np.nan for x in t])
    return t, sens, spared


# ----------------------------------------------------------------------------- calibration
CALIBRATIONS = ("sigmoid", "isotonic")


def fit_calibrator(kind: str, y: np.ndarray, p: np.ndarray) -> dict:
    """A map of probabilities fitted on (inner out-of-fold) training predictions:
    ``sigmoid`` (Platt: logistic regression on the logit) or ``isotonic``."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    if kind == "sigmoid":
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(y)) < 2:
            return {"kind": kind, "a": 1.0, "b": 0.0}
        lr = LogisticRegression(C=1e6).fit(logit(p)[:, None], y)
        return {"kind": kind, "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
    if kind == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return {"kind": kind, "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, not {kind!r}")


def apply_calibrator(state: Mapping | None, p: np.ndarray) -> np.ndarray:
    """Calibrated probabilities (``state`` None: unchanged)."""
    p = np.asarray(p, dtype=np.float64)
    if not state:
        return p
    if state["kind"] == "sigmoid":
        return expit(state["a"] * logit(p) + state["b"])
    return np.interp(p, np.asarray(state["x"]), np.asarray(state["y"]))


def calibration_bins(p: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    """Each probability's bin among ``bins`` equal-width ones, by the rule of
    ``sklearn.calibration.calibration_curve`` (``strategy="uniform"``): a bin holds its upper
    edge, so 0.1 is in the first bin (0, 0.1] and 0 too; the ECE and the reliability curve
    share it."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(p, dtype=np.float64))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Reliability curve (``sklearn.calibration.calibration_curve``, equal-width bins): per
    non-empty bin of predicted probability, ``{bin_low, bin_high, n, mean_probability,
    observed}`` (observed = share tumoral)."""
    from sklearn.calibration import calibration_curve

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return []
    observed, mean_probability = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    counts = np.bincount(calibration_bins(p, bins), minlength=bins)
    filled = np.flatnonzero(counts)  # calibration_curve's bins, in order (empty ones dropped)
    return [
        {
            "bin_low": float(k / bins),
            "bin_high": float((k + 1) / bins),
            "n": int(counts[k]),
            "mean_probability": float(m),
            "observed": float(o),
        }
        for k, m, o in zip(filled, mean_probability, observed, strict=True)
    ]


# ----------------------------------------------------------------------------- a run
#: threshold columns an out-of-fold table may carry (one cut per outer fold), by prefix
THRESHOLD_COLUMNS = {"youden_": "youden_threshold", "triage_": "triage_threshold"}
FIXED_THRESHOLD = 0.5


def _calls(oof: Any) -> dict[str, np.ndarray]:
    """Per row, the 0/1 call at each threshold the table carries (the fixed one: column
    ``threshold`` when present, else 0.5)."""
    p = oof["probability"].to_numpy(dtype=np.float64)
    fixed = oof["threshold"].to_numpy(dtype=np.float64) if "threshold" in oof else FIXED_THRESHOLD
    calls = {"": (p >= fixed).astype(float)}
    for prefix, col in THRESHOLD_COLUMNS.items():
        if col in oof.columns:
            calls[prefix] = (p >= oof[col].to_numpy(dtype=np.float64)).astype(float)
    return calls


def patient_table(oof: Any) -> Any:
    """One row per patient (sorted by id): ``label``, mean ``probability`` over repeats and
    the call rate at each threshold (``call``, ``youden_call``, ``triage_call``)."""
    import pandas as pd

    df = pd.DataFrame({"patient_id": oof["patient_id"].astype(str), "label": oof["label"]})
    df["probability"] = oof["probability"].to_numpy(dtype=np.float64)
    for prefix, c in _calls(oof).items():
        df[f"{prefix}call"] = c
    t = df.groupby("patient_id", sort=True).agg(
        {"label": "first", **{c: "mean" for c in df.columns if c not in ("patient_id", "label")}}
    )
    t["label"] = t["label"].astype(int)
    return t


def evaluate(
    oofs: Mapping[str, Any],
    seed: int = 0,
    resamples: int = RESAMPLES,
    paired: Sequence[str] = ("roc_auc", "balanced_accuracy"),
) -> tuple[dict[str, dict], list[dict]]:
    """Figures of each head's out-of-fold table and paired differences between heads.

    Returns ``(per_head, pairs)``: ``per_head[name] = {"metrics": {figure: summarize(...)},
    "per_fold": [...], "reliability": [...], "n_patients", "n_tumoral", "n_reactive",
    "best", "vs_best": {figure: paired_difference(...)}}`` and one ``pairs`` row per
    ordered pair (A before B in ``oofs`` order) and figure. Every head is resampled with
    the same patient counts (paired); the best head follows :data:`BEST_RULE`."""
    tables = {h: patient_table(o) for h, o in oofs.items()}
    names = list(tables)
    if not names:
        return {}, []
    ref = tables[names[0]]
    for h in names[1:]:
        t = tables[h]
        if list(t.index) != list(ref.index):
            odd = sorted(set(t.index) ^ set(ref.index))
            raise ValueError(f"heads {names[0]} and {h} were scored on other patients ({odd[:1]})")
    y = ref["label"].to_numpy()
    w = resample_weights(y, resamples, seed)
    boots, points, out = {}, {}, {}
    for h, t in tables.items():
        calls = {c[: -len("call")]: t[c].to_numpy() for c in t.columns if c.endswith("call")}
        p = t["probability"].to_numpy()
        boots[h] = patient_metrics(y, p, calls, w)
        points[h] = {k: float(v[0]) for k, v in patient_metrics(y, p, calls).items()}
        per_fold = []
        o = oofs[h]
        for (r, f), g in o.groupby(["repeat", "fold"], sort=True):
            fc = {k: v for k, v in _calls(g).items()}
            m = patient_metrics(g["label"].to_numpy(), g["probability"].to_numpy(), fc)
            row = {"repeat": int(r), "fold": int(f), "n_test": len(g)}
            for col in THRESHOLD_COLUMNS.values():
                if col in g.columns:
                    row[col] = float(g[col].iloc[0])
            row.update({k: float(v[0]) for k, v in m.items()})
            per_fold.append(row)
        out[h] = {
            "metrics": {
                k: summarize(points[h][k], boots[h][k], [r[k] for r in per_fold]) for k in points[h]
            },
            "per_fold": per_fold,
            "reliability": reliability(y, p),
            "n_patients": len(y),
            "n_tumoral": int((y == 1).sum()),
            "n_reactive": int((y == 0).sum()),
        }
    auc = {h: points[h]["roc_auc"] for h in names}
    best = best_of(auc)
    pairs = []
    for h in names:
        out[h]["best"] = best
        out[h]["vs_best"] = {
            k: paired_difference(points[h][k], points[best][k], boots[h][k], boots[best][k])
            for k in paired
        }
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for k in paired:
                d = paired_difference(points[a][k], points[b][k], boots[a][k], boots[b][k])
                pairs.append(
                    {"head_a": a, "head_b": b, "metric": k, **d, "verdict": verdict(a, b, d)}
                )
    return out, pairs


def verdict(a: str, b: str, diff: Mapping[str, float]) -> str:
    """``"A beats B"`` only when the paired interval excludes 0, else ``"no difference shown"``."""
    s = beats(diff)
    return f"{a} beats {b}" if s > 0 else f"{b} beats {a}" if s < 0 else "no difference shown"
