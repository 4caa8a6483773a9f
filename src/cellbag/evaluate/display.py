"""Terminal tables and plots of cross-validation results."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cellbag.core.io import atomic_path
from cellbag.evaluate.metrics import SHORT, TITLES
from cellbag.evaluate.stats import BEST_RULE, best_of

#: columns of the terminal table (each value with its 95% bootstrap interval)
TABLE_METRICS = ("roc_auc", "balanced_accuracy", "triage_sensitivity", "triage_spared")


def _num(x: object) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _short(x: float) -> str:
    """Two decimals without the leading zero (``.67``, ``-.33``), so intervals fit 80 columns."""
    return f"{x:.2f}".replace("0.", ".", 1) if abs(x) < 1 else f"{x:.2f}"


def _cell(row: pd.Series, k: str) -> str:
    if k not in row.index or not np.isfinite(_num(row[k])):
        return "–"
    lo, hi = _num(row.get(f"{k}_ci95_low")), _num(row.get(f"{k}_ci95_high"))
    return f"{row[k]:.3f}\n{_short(lo)}–{_short(hi)}"


def _vs_best(row: pd.Series) -> str:
    d = _num(row.get("roc_auc_vs_best"))
    if not np.isfinite(d) or row.get("head") == row.get("_best"):
        return "best"
    lo, hi = _num(row.get("roc_auc_vs_best_ci95_low")), _num(row.get("roc_auc_vs_best_ci95_high"))
    return f"{d:+.3f}\n{_short(lo)}–{_short(hi)}"


def comparison_table(table: pd.DataFrame, title: str = "cross-validation"):
    """A rich Table: one row per head; ROC AUC, balanced accuracy (threshold 0.5), the
    triage figures, each with its 95% bootstrap interval, and the
    paired ROC AUC difference to the best head."""
    from rich import box
    from rich.table import Table

    t = Table(
        title=title,
        caption="value, then its 95% bootstrap interval over patients; bal.acc at threshold "
        "0.5; tri.sens/spared at the triage threshold chosen in each training fold; "
        f"ΔAUC: paired difference to the best head, {BEST_RULE}; cl: clinical features",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    width = max([4, *(len(str(h)) for h in table.get("head", []))])
    t.add_column("head", style="bold cyan", no_wrap=True, min_width=width)
    t.add_column("cl", no_wrap=True)
    for k in TABLE_METRICS:
        t.add_column(SHORT[k], justify="right", no_wrap=True)
    t.add_column("ΔAUC", justify="right", no_wrap=True)
    t.add_column("s", justify="right", no_wrap=True)
    best = None
    if len(table) and "roc_auc" in table:
        auc = pd.to_numeric(table["roc_auc"], errors="coerce")
        best = best_of(dict(zip(table["head"], auc, strict=True)))
    for _, row in table.iterrows():
        cells = [_cell(row, k) for k in TABLE_METRICS]
        if row["head"] == best:
            cells[0] = f"[bold green]{cells[0]}[/]"
        t.add_row(
            str(row["head"]),
            "y" if row.get("clinical") else "n",
            *cells,
            _vs_best(pd.concat([row, pd.Series({"_best": best})])),
            f"{_num(row.get('seconds')):.1f}",
        )
    return t


def paired_lines(run_dir: Path) -> list[str]:
    """One line per paired comparison whose interval excludes 0 ("A beats B"), or one line
    saying that none does."""
    from cellbag.evaluate.run_folder import read_comparison

    _, pairs = read_comparison(Path(run_dir))
    if pairs is None or pairs.empty:
        return []
    lines = []
    for r in pairs.itertuples(index=False):
        if r.verdict == "no difference shown":
            continue
        sign = 1 if r.verdict.startswith(f"{r.head_a} beats") else -1
        lo, hi = sorted((sign * r.ci95_low, sign * r.ci95_high))
        lines.append(
            f"{r.verdict} on {TITLES.get(r.metric, r.metric)}: "
            f"{sign * r.difference:+.3f} [{lo:+.3f}, {hi:+.3f}], p = {r.p_value:.3f}"
        )
    if not lines:
        lines.append(
            "no head beats another: every paired 95% interval (ROC AUC, balanced accuracy) holds 0"
        )
    return lines


#: line styles of the heads' ROC curves (colour alone lets a curve hide under another)
LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)))


def _roc(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.metrics import roc_auc_score, roc_curve

    if len(np.unique(y)) < 2:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    fpr, tpr, _ = roc_curve(y, p)
    return fpr, tpr, float(roc_auc_score(y, p))


def roc_plot(
    oofs: Mapping[str, pd.DataFrame],
    path: Path,
    title: str = "ROC, mean out-of-fold probability per patient",
    bands: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """ROC curves of one or more heads (``name -> out-of-fold table`` with ``patient_id``,
    ``repeat``, ``label``, ``probability``): thick, each patient's mean probability over the
    repeats; thin, each repeat's pooled predictions. ``bands`` adds a text after a head's
    AUC (its interval). PNG (Agg, no pyplot state); returns each head's mean-curve AUC
    (NaN with one class)."""
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    aucs: dict[str, float] = {}
    for i, (name, oof) in enumerate(oofs.items()):
        c = colors[i % len(colors)]
        for _, rep in oof.groupby("repeat", sort=True):
            fpr, tpr, _ = _roc(rep["label"].to_numpy(), rep["probability"].to_numpy())
            ax.plot(fpr, tpr, color=c, alpha=0.25, lw=0.8)
        m = oof.groupby("patient_id", sort=False).agg(
            label=("label", "first"), probability=("probability", "mean")
        )
        fpr, tpr, auc = _roc(m["label"].to_numpy(), m["probability"].to_numpy())
        aucs[name] = auc
        band = (bands or {}).get(name, "")
        # a style and a width of its own, earlier heads on top: no curve hides another
        ax.plot(
            fpr,
            tpr,
            color=c,
            lw=max(1.2, 2.6 - 0.3 * i),
            ls=LINE_STYLES[i % len(LINE_STYLES)],
            zorder=10 + len(oofs) - i,
            label=f"{name} (AUC {auc:.3f}{band})",
        )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return aucs
