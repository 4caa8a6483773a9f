"""Terminal tables and plots of cross-validation results."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cellbag.aggregate.metrics import METRICS
from cellbag.core.io import atomic_path

LABELS = {
    "balanced_accuracy": "bal. acc",
    "roc_auc": "ROC AUC",
    "f1": "F1",
    "sensitivity": "sens.",
    "specificity": "spec.",
}


def _cell(row: pd.Series, k: str, interval: bool) -> str:
    m, s = row[f"{k}_mean"], row[f"{k}_std"]
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    text = f"{m:.3f}±{s:.3f}" if interval else f"{m:.2f}\n±{s:.2f}"
    if interval:
        text += f"\n[{row[f'{k}_ci95_low']:.2f},{row[f'{k}_ci95_high']:.2f}]"
    return text


def comparison_table(table: pd.DataFrame, title: str = "cross-validation"):
    """A rich Table: one row per head, mean ± std (and 95% interval) of each metric; the
    best balanced accuracy in bold."""
    from rich import box
    from rich.table import Table

    t = Table(
        title=title,
        caption="mean±std over folds×repeats; [2.5–97.5th percentiles]",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    width = max([4, *(len(str(h)) for h in table.get("head", []))])
    t.add_column("head", style="bold cyan", no_wrap=True, min_width=width)
    t.add_column("clin", no_wrap=True)
    for k in METRICS:
        t.add_column(LABELS[k], justify="right", no_wrap=True)
    t.add_column("s", justify="right", no_wrap=True)
    best = table["balanced_accuracy_mean"].max() if len(table) else None
    for _, row in table.iterrows():
        cells = [_cell(row, k, interval=k in ("balanced_accuracy", "roc_auc")) for k in METRICS]
        if best is not None and row["balanced_accuracy_mean"] == best:
            cells[0] = f"[bold green]{cells[0]}[/]"
        t.add_row(
            str(row["head"]), "yes" if row["clinical"] else "no", *cells, f"{row['seconds']:.1f}"
        )
    return t


def roc_plot(oof: pd.DataFrame, path: Path, title: str = "") -> Path:
    """ROC curves of the pooled out-of-fold predictions, one per repeat (Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    aucs = []
    for r, g in oof.groupby("repeat"):
        y, p = g["label"].to_numpy(), g["probability"].to_numpy()
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        aucs.append(roc_auc_score(y, p))
        ax.plot(fpr, tpr, lw=1.2, alpha=0.8, label=f"repeat {r}: AUC {aucs[-1]:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    if aucs:
        title = f"{title}\nout-of-fold AUC {np.mean(aucs):.3f} ± {np.std(aucs):.3f}"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path
