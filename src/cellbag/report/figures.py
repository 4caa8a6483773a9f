"""Figures of the report (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellbag.core.io import atomic_path
from cellbag.report.cv_run import HeadRun


def roc_figure(heads: list[HeadRun], out_png: Path) -> dict[str, float]:
    """ROC curves of every head over the patients' mean OOF probability (thin lines: each
    repeat's pooled OOF predictions), with each head's 95% interval of ROC AUC. Returns the
    AUC of each head's mean-probability curve."""
    from cellbag.evaluate.display import roc_plot

    bands = {}
    for h in heads:
        ci = _figure(h, "roc_auc")
        bands[h.name] = f" [{ci['ci95_low']:.2f}, {ci['ci95_high']:.2f}]" if ci else ""
    return roc_plot({h.name: h.oof for h in heads}, out_png, bands=bands)


def _save(fig, out_png: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def _figure(h: HeadRun, key: str) -> dict:
    return (h.metrics_raw.get("metrics") or {}).get(key) or {}


def triage_figure(heads: list[HeadRun], out_png: Path) -> bool:
    """Share of reactive patients spared (below the cut) against sensitivity, along the ROC
    of each head's mean out-of-fold probability; the nested triage operating point marked
    with its 95% bootstrap intervals. False when no head has a triage figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from cellbag.evaluate.stats import operating_curve

    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    target = None
    for i, h in enumerate(heads):
        c = colors[i % len(colors)]
        t = h.patient_table()
        _, sens, spared = operating_curve(t["label"].to_numpy(), t["probability"].to_numpy())
        ax.step(np.r_[0, sens], np.r_[1, spared], where="post", color=c, lw=1.5, label=h.name)
        s, sp = _figure(h, "triage_sensitivity"), _figure(h, "triage_spared")
        if s and sp:
            drawn = True
            ax.errorbar(
                [s["value"]],
                [sp["value"]],
                xerr=[[s["value"] - s["ci95_low"]], [s["ci95_high"] - s["value"]]],
                yerr=[[sp["value"] - sp["ci95_low"]], [sp["ci95_high"] - sp["value"]]],
                fmt="o",
                color=c,
                capsize=3,
                ms=6,
            )
            tri = (h.metrics_raw.get("thresholds") or {}).get("triage") or {}
            target = tri.get("target_sensitivity", target)
    if target:
        ax.axvline(float(target), ls=":", color="grey", lw=0.8)
    ax.set_xlabel("Sensitivity (tumoral patients sent to cytometry)")
    ax.set_ylabel("Reactive patients spared")
    ax.set_title("Triage: share spared vs sensitivity (dots: nested operating point)", fontsize=9)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, out_png)
    return drawn


def calibration_figure(heads: list[HeadRun], out_png: Path) -> bool:
    """Reliability curves (observed share tumoral against mean predicted probability, per
    bin) of every head's mean out-of-fold probability. False when no head has one."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from cellbag.evaluate.stats import reliability

    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for i, h in enumerate(heads):
        t = h.patient_table()
        bins = reliability(t["label"].to_numpy(), t["probability"].to_numpy())
        if not bins:
            continue
        drawn = True
        x = [b["mean_probability"] for b in bins]
        y = [b["observed"] for b in bins]
        n = np.asarray([b["n"] for b in bins], float)
        c = colors[i % len(colors)]
        ax.plot(x, y, "-", color=c, lw=1.2, label=h.name)
        ax.scatter(x, y, s=12 + 60 * n / n.max(), color=c)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("Mean predicted probability (bin)")
    ax.set_ylabel("Observed share tumoral")
    ax.set_title("Reliability (dot size: patients in the bin)", fontsize=10)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, out_png)
    return drawn
