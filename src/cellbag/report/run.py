"""Read a cross-validation run folder (``cellbag cv --out RUN_DIR``) into plain tables.

Layout (issue 4): ``RUN_DIR/splits.json``, ``RUN_DIR/comparison.csv`` and one folder per
head, ``RUN_DIR/<head>/`` with ``metrics.json``, ``oof_predictions.csv``, ``config.json``,
``roc.png`` and, for attention heads, ``attention.csv`` (or ``.parquet``); other heads
leave their per-cell contributions in ``contributions.csv`` (same columns plus ``kind``:
logit, argmax or cluster gain). A head folder given directly is read as a run of one head.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.report.errors import ReportError

#: display order and names of the metrics issue 4 asks for; others follow alphabetically
METRIC_NAMES: dict[str, str] = {
    "balanced_accuracy": "Balanced accuracy",
    "roc_auc": "ROC AUC",
    "f1": "F1",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
}
_ALIASES = {"auc": "roc_auc", "bacc": "balanced_accuracy", "f1_score": "f1"}
_OOF_COLUMNS = ("patient_id", "repeat", "fold", "probability", "label")
_ATT_COLUMNS = ("patient_id", "cell_id", "path", "repeat", "fold", "weight")


@dataclass(frozen=True)
class Metric:
    """One metric across folds×repeats: mean, std and 95% interval (``lo``, ``hi``)."""

    key: str
    mean: float
    std: float
    lo: float
    hi: float
    n: int | None = None

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
        """One row per patient: label, mean/std OOF probability over repeats, prediction, correct."""
        g = self.oof.groupby("patient_id", sort=False)
        t = pd.DataFrame(
            {
                "label": g["label"].first().astype("int64"),
                "probability": g["probability"].mean(),
                "probability_std": g["probability"].std(ddof=0).fillna(0.0),
                "repeats": g["probability"].size().astype("int64"),
            }
        )
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except OSError as e:
        raise ReportError(f"{path}: cannot read ({e.strerror})") from None


def _num(v: Any, where: str) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ReportError(f"{where}: expected a number, got {v!r}") from None


def _interval(d: dict[str, Any], where: str) -> tuple[float, float]:
    for key in ("ci95", "ci_95", "ci", "interval", "interval95", "ci95%"):
        v = d.get(key)
        if isinstance(v, list | tuple) and len(v) == 2:
            return _num(v[0], f"{where}.{key}[0]"), _num(v[1], f"{where}.{key}[1]")
        if isinstance(v, dict):
            lo = v.get("lo", v.get("low", v.get("lower")))
            hi = v.get("hi", v.get("high", v.get("upper")))
            return _num(lo, f"{where}.{key}"), _num(hi, f"{where}.{key}")
    for lo_key, hi_key in (
        ("ci95_low", "ci95_high"),
        ("ci95_lo", "ci95_hi"),
        ("ci_low", "ci_high"),
        ("ci_lo", "ci_hi"),
        ("low", "high"),
        ("lo", "hi"),
        ("lower", "upper"),
    ):
        if lo_key in d and hi_key in d:
            return _num(d[lo_key], f"{where}.{lo_key}"), _num(d[hi_key], f"{where}.{hi_key}")
    return math.nan, math.nan


def parse_metrics(raw: Any, path: Path) -> list[Metric]:
    """The metrics of a ``metrics.json``: every entry that holds a ``mean``, in display order."""
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: expected a JSON object of metrics")
    body = raw
    for key in ("summary", "metrics"):  # `cellbag cv` nests them under "summary"
        if isinstance(raw.get(key), dict):
            body = raw[key]
            break
    found: dict[str, Metric] = {}
    for key, d in body.items():
        if not isinstance(d, dict) or "mean" not in d:
            continue
        k = _ALIASES.get(key, key)
        where = f"{path}: {key}"
        lo, hi = _interval(d, where)
        n = d.get("n", d.get("count"))
        found[k] = Metric(
            k,
            _num(d["mean"], f"{where}.mean"),
            _num(d.get("std"), f"{where}.std"),
            lo,
            hi,
            int(n) if isinstance(n, int | float) and not isinstance(n, bool) else None,
        )
    if not found:
        raise ReportError(
            f"{path}: no metrics found (expected entries like "
            '"summary": {"balanced_accuracy": {"mean": ..., "std": ..., "ci95_low": ..., ...}})'
        )
    order = [k for k in METRIC_NAMES if k in found] + sorted(set(found) - set(METRIC_NAMES))
    return [found[k] for k in order]


def _threshold(metrics: dict[str, Any], config: dict[str, Any], path: Path) -> float:
    for src in (metrics, config, metrics.get("config") or {}):
        v = src.get("threshold") if isinstance(src, dict) else None
        if isinstance(v, dict):
            v = v.get("value")
        if isinstance(v, int | float) and not isinstance(v, bool):
            t = float(v)
            if not 0.0 <= t <= 1.0:
                raise ReportError(f"{path}: threshold {t} is outside [0, 1]")
            return t
    return 0.5


def _read_csv(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"patient_id": str, "cell_id": str, "path": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot parse {what} ({str(e).splitlines()[0]})") from None
    if "patient_id" not in df.columns and "patient" in df.columns:
        df = df.rename(columns={"patient": "patient_id"})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ReportError(
            f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})"
        )
    df["patient_id"] = df["patient_id"].astype(str)
    return df


def _read_oof(path: Path) -> pd.DataFrame:
    df = _read_csv(path, _OOF_COLUMNS, "out-of-fold predictions")
    if df.empty:
        raise ReportError(f"{path}: no out-of-fold predictions")
    p = pd.to_numeric(df["probability"], errors="coerce")
    if p.isna().any() or not ((p >= 0) & (p <= 1)).all():
        bad = df.loc[p.isna() | (p < 0) | (p > 1), "patient_id"].iloc[0]
        raise ReportError(f"{path}: probability of patient {bad} is not a number in [0, 1]")
    y = pd.to_numeric(df["label"], errors="coerce")
    if not y.isin([0, 1]).all():
        bad = df.loc[~y.isin([0, 1]), "patient_id"].iloc[0]
        raise ReportError(f"{path}: label of patient {bad} is not 0 or 1")
    df["probability"] = p.astype("float64")
    df["label"] = y.astype("int64")
    clash = df.groupby("patient_id")["label"].nunique()
    if (clash > 1).any():
        raise ReportError(f"{path}: patient {clash[clash > 1].index[0]} has two labels")
    return df


def _read_attention(folder: Path, stem: str = "attention") -> pd.DataFrame | None:
    csv, pq = folder / f"{stem}.csv", folder / f"{stem}.parquet"
    if csv.exists():
        df = _read_csv(csv, _ATT_COLUMNS, "attention weights")
        where = csv
    elif pq.exists():
        try:
            df = pd.read_parquet(pq)
        except ImportError:
            raise ReportError(
                f"{pq}: reading Parquet needs pyarrow (pip install pyarrow)"
            ) from None
        missing = [c for c in _ATT_COLUMNS if c not in df.columns]
        if missing:
            raise ReportError(f"{pq}: missing column(s) {', '.join(missing)}")
        for c in ("patient_id", "cell_id", "path"):
            df[c] = df[c].astype(str)
        where = pq
    else:
        return None
    w = pd.to_numeric(df["weight"], errors="coerce")
    if w.isna().any():
        bad = df.loc[w.isna(), "cell_id"].iloc[0]
        raise ReportError(f"{where}: weight of cell {bad} is not a number")
    df["weight"] = w.astype("float64")
    if stem != "attention":
        df["kind"] = df["kind"].astype(str) if "kind" in df.columns else "contribution"
    return df


def normalize_config(c: dict[str, Any]) -> dict[str, Any]:
    """A head's config with the settings that define the run (``cellbag cv`` nests them
    under ``key``) at the top level."""
    key = c.get("key")
    if not isinstance(key, dict):
        return dict(c)
    return {**key, **{k: v for k, v in c.items() if k != "key"}}


def is_head_folder(folder: Path) -> bool:
    """A head's results live here (``metrics.json`` and ``oof_predictions.csv``)."""
    return (folder / "metrics.json").is_file() and (folder / "oof_predictions.csv").is_file()


def load_head(folder: Path) -> HeadRun:
    """Read one head folder."""
    folder = Path(folder)
    for name in ("metrics.json", "oof_predictions.csv"):
        if not (folder / name).is_file():
            raise ReportError(f"{folder}: no {name} (is this a `cellbag cv` head folder?)")
    metrics_raw = _read_json(folder / "metrics.json")
    metrics = parse_metrics(metrics_raw, folder / "metrics.json")
    config: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        c = _read_json(folder / "config.json")
        if not isinstance(c, dict):
            raise ReportError(f"{folder / 'config.json'}: expected a JSON object")
        config = normalize_config(c)
    oof = _read_oof(folder / "oof_predictions.csv")
    attention = _read_attention(folder)
    contributions = None if attention is not None else _read_attention(folder, "contributions")
    for stem, table in (("attention", attention), ("contributions", contributions)):
        unknown = [] if table is None else sorted(set(table["patient_id"]) - set(oof["patient_id"]))
        if unknown:
            raise ReportError(
                f"{folder}: {stem}.csv names patient {unknown[0]}, absent from oof_predictions.csv"
            )
    name = config.get("head") if isinstance(config.get("head"), str) else None
    roc = folder / "roc.png"
    return HeadRun(
        name=name or folder.name,
        folder=folder,
        metrics=metrics,
        metrics_raw=metrics_raw,
        config=config,
        oof=oof,
        attention=attention,
        threshold=_threshold(metrics_raw, config, folder / "metrics.json"),
        roc_png=roc if roc.is_file() else None,
        contributions=contributions,
    )


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder (or a single head folder) into a ``Run``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} not found")
    if is_head_folder(run_dir):
        heads = [load_head(run_dir)]
        root = run_dir.parent if (run_dir.parent / "splits.json").is_file() else run_dir
    else:
        folders = sorted(p for p in run_dir.iterdir() if p.is_dir() and is_head_folder(p))
        if not folders:
            raise ReportError(
                f"{run_dir}: no head results (expected <head>/metrics.json and "
                "<head>/oof_predictions.csv; run `cellbag cv ... --out` first)"
            )
        heads = [load_head(p) for p in folders]
        root = run_dir
    splits = _read_json(root / "splits.json") if (root / "splits.json").is_file() else None
    comparison = None
    if (root / "comparison.csv").is_file():
        try:
            comparison = pd.read_csv(root / "comparison.csv")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ReportError(f"{root / 'comparison.csv'}: cannot parse ({e})") from None
    config: dict[str, Any] = {}
    if not is_head_folder(root) and (root / "config.json").is_file():
        c = _read_json(root / "config.json")
        config = c if isinstance(c, dict) else {}
    # a comparison table is useful only when the heads are ordered by it
    if comparison is not None and "head" in comparison.columns:
        order = {str(h): i for i, h in enumerate(comparison["head"])}
        heads.sort(key=lambda h: (order.get(h.name, len(order)), h.name))
    # heads with cell scores first: their sections carry the cell galleries
    heads.sort(key=lambda h: h.cell_kind is None)
    return Run(folder=root, heads=heads, splits=splits, comparison=comparison, config=config)


def finite(x: float) -> bool:
    """True for a real number (not NaN/inf)."""
    return bool(np.isfinite(x))
