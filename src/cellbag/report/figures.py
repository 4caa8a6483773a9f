"""Figures of the report (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellbag.core.io import atomic_path
from cellbag.report.run import HeadRun


def _roc(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.metrics import roc_auc_score, roc_curve

    if len(np.unique(y)) < 2:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    fpr, tpr, _ = roc_curve(y, p)
    return fpr, tpr, float(roc_auc_score(y, p))


def roc_figure(heads: list[HeadRun], out_png: Path) -> dict[str, float]:
    """ROC curves of every head over the patients' mean OOF probability (thin lines: each
    repeat's pooled OOF predictions). Returns the AUC of each head's mean-probability curve."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    aucs: dict[str, float] = {}
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, h in enumerate(heads):
        c = colors[i % len(colors)]
        for _, rep in h.oof.groupby("repeat", sort=True):
            fpr, tpr, _ = _roc(rep["label"].to_numpy(), rep["probability"].to_numpy())
            ax.plot(fpr, tpr, color=c, alpha=0.25, lw=0.8)
        t = h.patient_table()
        fpr, tpr, auc = _roc(t["label"].to_numpy(), t["probability"].to_numpy())
        aucs[h.name] = auc
        ax.plot(fpr, tpr, color=c, lw=2, label=f"{h.name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title("ROC, mean out-of-fold probability per patient", fontsize=10)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return aucs
