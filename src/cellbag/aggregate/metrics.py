"""Binary metrics at a threshold, their spread across folds, and Youden's threshold."""

from __future__ import annotations

import math

import numpy as np

METRICS = ("balanced_accuracy", "roc_auc", "f1", "sensitivity", "specificity")


def binary_metrics(
    y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Balanced accuracy, ROC AUC, F1, sensitivity and specificity; predictions are
    ``proba >= threshold``. Balanced accuracy is ``balanced_accuracy_score(y_true, y_pred)``
    (that argument order: a constant predictor scores 0.5). AUC is NaN with one class."""
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = (proba >= threshold).astype(int)
    pos, neg = y_true == 1, y_true == 0
    sens = float((y_pred[pos] == 1).mean()) if pos.any() else math.nan
    spec = float((y_pred[neg] == 0).mean()) if neg.any() else math.nan
    two = pos.any() and neg.any()
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if two else math.nan,
        "roc_auc": float(roc_auc_score(y_true, proba)) if two else math.nan,
        "f1": float(f1_score(y_true, y_pred, zero_division=0.0)),
        "sensitivity": sens,
        "specificity": spec,
    }


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, std (ddof=1) and the empirical 95% interval (2.5th-97.5th percentiles) of
    per-fold values; NaNs (single-class folds) are left out and counted."""
    a = np.asarray(values, dtype=np.float64)
    ok = a[~np.isnan(a)]
    if len(ok) == 0:
        return {
            "mean": math.nan,
            "std": math.nan,
            "ci95_low": math.nan,
            "ci95_high": math.nan,
            "n": 0,
        }
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return {
        "mean": float(ok.mean()),
        "std": float(ok.std(ddof=1)) if len(ok) > 1 else 0.0,
        "ci95_low": float(lo),
        "ci95_high": float(hi),
        "n": int(len(ok)),
    }


def youden_threshold(y_true: np.ndarray, proba: np.ndarray) -> float:
    """The probability cut maximising sensitivity + specificity - 1 (ties: the highest cut)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(y_true).astype(int), np.asarray(proba, dtype=np.float64))
    j = tpr - fpr
    finite = np.isfinite(thr)
    j = np.where(finite, j, -np.inf)
    return float(thr[int(np.argmax(j))])
