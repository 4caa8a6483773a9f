"""The names of every figure a cv run reports, and binary metrics at a threshold.

These names are the same in ``metrics.json``, ``comparison.csv``, the CLI table, the
report and the README (the ``cellbag runs`` leaderboard reads them too):

====================== ==========================================================
``roc_auc``            ROC AUC of the patients' mean out-of-fold probability
``balanced_accuracy``  at the fixed threshold 0.5 (the challenge's metric)
``sensitivity``        share of tumoral patients called tumoral, threshold 0.5
``specificity``        share of reactive patients called reactive, threshold 0.5
``f1``                 F1 of the tumoral class, threshold 0.5
``youden_*``           the same three at Youden's threshold, chosen in each training
                       fold from inner out-of-fold predictions (nested)
``triage_sensitivity`` sensitivity at the triage threshold (chosen in each training
                       fold for a target sensitivity, default 0.95)
``triage_spared``      share of reactive patients below the triage threshold: those
                       whose flow cytometry could be spared
``brier``              mean squared error of the probability (lower is better)
``ece``                expected calibration error, 10 equal-width bins (lower is better)
====================== ==========================================================

Each figure comes with ``ci95_low``/``ci95_high`` (stratified bootstrap over patients,
:mod:`cellbag.evaluate.stats`) and the spread of its per-fold values (``fold_sd``,
``fold_min``, ``fold_max``), which is not an interval.
"""

from __future__ import annotations

import math

import numpy as np

from cellbag.evaluate.stats import youden_threshold

#: every figure, in display order
METRICS = (
    "roc_auc",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "f1",
    "youden_balanced_accuracy",
    "youden_sensitivity",
    "youden_specificity",
    "triage_sensitivity",
    "triage_spared",
    "brier",
    "ece",
)
#: figures where lower is better
LOWER_IS_BETTER = ("brier", "ece")
#: figures compared between heads by paired bootstrap
PAIRED = ("roc_auc", "balanced_accuracy")

#: long names (report) and short ones (terminal table)
TITLES = {
    "roc_auc": "ROC AUC",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "f1": "F1",
    "youden_balanced_accuracy": "Balanced accuracy (Youden, nested)",
    "youden_sensitivity": "Sensitivity (Youden, nested)",
    "youden_specificity": "Specificity (Youden, nested)",
    "triage_sensitivity": "Triage sensitivity",
    "triage_spared": "Reactive patients spared",
    "brier": "Brier score",
    "ece": "ECE",
}
SHORT = {
    "roc_auc": "AUC",
    "balanced_accuracy": "bal.acc",
    "triage_sensitivity": "tri.sens",
    "triage_spared": "spared",
    "brier": "Brier",
}

__all__ = ["LOWER_IS_BETTER", "METRICS", "PAIRED", "TITLES", "binary_metrics", "youden_threshold"]


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
