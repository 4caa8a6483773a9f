"""A cross-validation run folder (``cellbag cv --out RUN_DIR``) as the report sees it.

Files are read by :mod:`cellbag.evaluate.run_folder` (the one reader/writer of the
layout); this module adds what the report shows: per-patient tables, cell galleries
(attention, or the per-cell contributions of heads without attention), confusion counts. A head folder given directly is read as a run of one head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.evaluate import run_folder as rf
from cellbag.evaluate.metrics import METRICS, TITLES
from cellbag.report.errors import ReportError

#: display names of the figures (the names of ``metrics.json``)
METRIC_NAMES: dict[str, str] = {k: TITLES[k] for k in METRICS}


@dataclass(frozen=True)
class Metric:
    """One figure: its value on the pooled out-of-fold predictions, its 95% bootstrap
    interval (``lo``, ``hi``) and the spread of its per-fold values (not an interval)."""

    key: str
    value: float
    lo: float
    hi: float
    fold_sd: float
    fold_min: float
    fold_max: float
    n_folds: int | None = None

    @property
    def title(self) -> str:
        return METRIC_NAMES.get(self.key, self.key.replace("_", " ").capitalize())


@dataclass
class HeadRun:
    """Everything one head left in its folder."""

    name: str
    folder: Path
    metrics: list[Metric]
    metrics_raw: dict[str, Any]
    config: dict[str, Any]
    oof: pd.DataFrame
    attention: pd.DataFrame | None
    threshold: float
    roc_png: Path | None
    contributions: pd.DataFrame | None = None  # per-cell scores of a head without attention

    @property
    def cell_kind(self) -> str | None:
        """What the galleries rank cells by: attention, logit, argmax, cluster gain (or None)."""
        if self.attention is not None:
            return "attention"
        if self.contributions is not None and len(self.contributions):
            return str(self.contributions["kind"].iloc[0])
        return None

    def patient_table(self) -> pd.DataFrame:
        """One row per patient: label, mean/std OOF probability over repeats, prediction,
        correct; for a fused head also the mean of each log-odds term (base, image,
        clinical) over repeats."""
        g = self.oof.groupby("patient_id", sort=False)
        t = pd.DataFrame(
            {
                "label": g["label"].first().astype("int64"),
                "probability": g["probability"].mean(),
                "probability_std": g["probability"].std(ddof=0).fillna(0.0),
                "repeats": g["probability"].size().astype("int64"),
            }
        )
        for term in ("base", "image", "clinical"):
            col = f"log_odds_{term}"
            if col in self.oof:  # late fusion: mean over repeats of each log-odds term
                t[col] = g[col].mean()
        t.index = t.index.astype(object)
        t.index.name = "patient_id"
        t["predicted"] = (t["probability"] >= self.threshold).astype("int64")
        t["correct"] = t["predicted"] == t["label"]
        return t.reset_index()

    def cell_weights(self) -> pd.DataFrame | None:
        """Mean out-of-fold attention weight (or contribution) per cell over repeats, with
        the bag size."""
        a = self.attention if self.attention is not None else self.contributions
        if a is None:
            return None
        w = (
            a.groupby(["patient_id", "cell_id"], sort=False)
            .agg(path=("path", "first"), weight=("weight", "mean"))
            .reset_index()
        )
        w["n_cells"] = w.groupby("patient_id")["cell_id"].transform("size").astype("int64")
        return w

    def top_cells(self, k: int) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
        """Per patient: its top-k cells by mean attention (highest first) and its bottom-k
        cells (lowest first), never showing a cell twice."""
        w = self.cell_weights()
        if w is None:
            return {}
        out: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
        for pid, cells in w.groupby("patient_id", sort=False):
            # ties broken by cell id, so the galleries are deterministic
            s = cells.sort_values(["weight", "cell_id"], ascending=[False, True], kind="stable")
            top = s.head(k)
            rest = s.iloc[len(top) :]
            bottom = rest.iloc[::-1].head(k)
            out[str(pid)] = (top.reset_index(drop=True), bottom.reset_index(drop=True))
        return out

    def confusion(self) -> dict[str, int]:
        """Counts at the threshold over the patients' mean OOF probability."""
        t = self.patient_table()
        y, p = t["label"].to_numpy(), t["predicted"].to_numpy()
        return {
            "tp": int(((y == 1) & (p == 1)).sum()),
            "fn": int(((y == 1) & (p == 0)).sum()),
            "fp": int(((y == 0) & (p == 1)).sum()),
            "tn": int(((y == 0) & (p == 0)).sum()),
        }


@dataclass
class Run:
    """A cv run: its folder, shared files and one ``HeadRun`` per head."""

    folder: Path
    heads: list[HeadRun]
    splits: dict[str, Any] | None = None
    comparison: pd.DataFrame | None = None
    pairs: pd.DataFrame | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def encoder_id(self) -> str | None:
        for c in [self.config, *(h.config for h in self.heads)]:
            for key in ("encoder_id", "encoder"):
                v = c.get(key)
                if isinstance(v, str) and v:
                    return v
        return None

    @property
    def encoder_info(self) -> dict[str, Any] | None:
        """The encoder's record as the run saved it (``encoder_info`` in config.json)."""
        for c in [self.config, *(h.config for h in self.heads)]:
            v = c.get("encoder_info")
            if isinstance(v, dict) and v:
                return v
        return None

    @property
    def store_path(self) -> str | None:
        for c in [self.config, *(h.config for h in self.heads)]:
            v = c.get("store")
            if isinstance(v, str) and v:
                return v
        return None


def _metrics(doc: dict[str, Any], path: Path) -> list[Metric]:
    found = rf.check_metrics(doc, path)

    def num(v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ReportError(f"{path}: expected a number, got {v!r}") from None

    out = {}
    for k, d in found.items():
        n = d.get("n_folds")
        out[k] = Metric(
            k,
            num(d["value"]),
            num(d.get("ci95_low")),
            num(d.get("ci95_high")),
            num(d.get("fold_sd")),
            num(d.get("fold_min")),
            num(d.get("fold_max")),
            int(n) if isinstance(n, int | float) and not isinstance(n, bool) else None,
        )
    order = [k for k in METRIC_NAMES if k in out] + sorted(set(out) - set(METRIC_NAMES))
    return [out[k] for k in order]


def _threshold(metrics: dict[str, Any], config: dict[str, Any], path: Path) -> float:
    fixed = (metrics.get("thresholds") or {}).get("fixed")
    for v in (metrics.get("threshold"), config.get("threshold"), fixed):
        if isinstance(v, dict):
            v = v.get("value")
        if isinstance(v, int | float) and not isinstance(v, bool):
            t = float(v)
            if not 0.0 <= t <= 1.0:
                raise ReportError(f"{path}: threshold {t} is outside [0, 1]")
            return t
    return 0.5


def load_head(folder: Path) -> HeadRun:
    """Read one head folder."""
    try:
        r = rf.read_head(folder)
    except rf.RunFolderError as e:
        raise ReportError(str(e)) from None
    path = Path(folder) / rf.METRICS_FILE
    roc = Path(folder) / "roc.png"
    try:
        contributions = None if r.attention is not None else rf.read_contributions(folder)
    except rf.RunFolderError as e:
        raise ReportError(str(e)) from None
    return HeadRun(
        name=r.name,
        folder=Path(folder),
        metrics=_metrics(r.metrics, path),
        metrics_raw=r.metrics,
        config=r.config,
        oof=r.oof,
        attention=r.attention,
        threshold=_threshold(r.metrics, r.config, path),
        roc_png=roc if roc.is_file() else None,
        contributions=contributions,
    )


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder (or a single head folder) into a ``Run``."""
    run_dir = Path(run_dir)
    try:
        folders = rf.head_folders(run_dir)
        single = folders == [run_dir]
        root = run_dir.parent if single and (run_dir.parent / rf.SPLITS).is_file() else run_dir
        heads = [load_head(p) for p in folders]
        splits = rf.read_json(root / rf.SPLITS) if (root / rf.SPLITS).is_file() else None
        comparison, pairs = rf.read_comparison(root)
    except rf.RunFolderError as e:
        raise ReportError(str(e)) from None
    if pairs is not None:
        names = {h.name for h in heads}
        pairs = pairs[pairs["head_a"].isin(names) & pairs["head_b"].isin(names)]
    # heads in the order of the comparison table, those with attention first
    if comparison is not None and "head" in comparison.columns:
        order = {str(h): i for i, h in enumerate(comparison["head"])}
        heads.sort(key=lambda h: (order.get(h.name, len(order)), h.name))
    heads.sort(key=lambda h: h.cell_kind is None)  # heads with galleries first
    return Run(
        folder=root, heads=heads, splits=splits, comparison=comparison, pairs=pairs, config={}
    )


def finite(x: float) -> bool:
    """True for a real number (not NaN/inf)."""
    return bool(np.isfinite(x))
