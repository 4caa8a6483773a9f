"""The cv run folder: its one writer and reader (``cellbag cv`` writes it; ``fit``,
``report`` and ``distill`` read it through this module).

::

    RUN_DIR/splits.json              the outer splits (written once, reused)
    RUN_DIR/comparison.csv           one row per head (columns below)
    RUN_DIR/comparison_pairs.csv     every pair of heads: paired bootstrap differences
    RUN_DIR/<head>/metrics.json      figures of the head (schema below)
    RUN_DIR/<head>/oof_predictions.csv
        patient_id, repeat, fold, probability, label, youden_threshold, triage_threshold
        [, probability_raw]: one row per patient and repeat; the thresholds are those
        chosen inside that row's training fold; probability_raw before --calibrate
    RUN_DIR/<head>/attention.csv     patient_id, cell_id, path, repeat, fold, weight
    RUN_DIR/<head>/contributions.csv the same plus kind, for heads without attention: signed
        per-cell terms of the logit (meanpool), occlusion (svm, ensemble) or the cluster gain
        share (lgbm); the report's galleries (distill reads attention only)
    RUN_DIR/<head>/config.json       {"key": what defines the run, "state", ...}
    RUN_DIR/<head>/folds/r<R>_f<F>.json   finished folds (resume)

``metrics.json`` (``format`` ``cellbag-cv-metrics``, ``version`` 2)::

    head, clinical, n_patients, n_tumoral, n_reactive, folds, repeats, inner_folds, seed
    interval    {method, level, resamples, seed}
    thresholds  {fixed: 0.5, youden: {method, fold_mean, fold_min, fold_max},
                 triage: {target_sensitivity, method, fold_mean, fold_min, fold_max}}
    calibration {method: null | sigmoid | isotonic, reliability: [{bin_low, bin_high, n,
                 mean_probability, observed}]}
    metrics     {<figure>: {value, ci95_low, ci95_high, fold_sd, fold_min, fold_max, n_folds}}
    best        the head of the run with the highest ROC AUC
    vs_best     {roc_auc | balanced_accuracy: {difference, ci95_low, ci95_high, p_value}}
    per_fold    [{repeat, fold, n_test, youden_threshold, triage_threshold, <figure>...}]

Figure names are listed in :mod:`cellbag.evaluate.metrics`. ``comparison.csv``: ``head,
clinical, n_patients``, then per figure ``<figure>, <figure>_ci95_low, <figure>_ci95_high,
<figure>_fold_sd``, then ``<m>_vs_best, <m>_vs_best_ci95_low, <m>_vs_best_ci95_high,
<m>_vs_best_p`` for ``m`` in roc_auc, balanced_accuracy, then ``seconds``.
``comparison_pairs.csv``: ``head_a, head_b, metric, difference, ci95_low, ci95_high,
p_value, verdict`` ("A beats B" only when the interval excludes 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.core import io
from cellbag.evaluate.errors import RunFolderError
from cellbag.evaluate.metrics import METRICS, PAIRED
from cellbag.evaluate.stats import LEVEL, RESAMPLES, best_of, evaluate

METRICS_FORMAT = "cellbag-cv-metrics"
METRICS_VERSION = 2
SPLITS = "splits.json"
COMPARISON = "comparison.csv"
PAIRS = "comparison_pairs.csv"
METRICS_FILE = "metrics.json"
OOF_FILE = "oof_predictions.csv"
CONFIG_FILE = "config.json"
ATTENTION_FILES = ("attention.csv", "attention.parquet")
CONTRIBUTIONS_FILE = "contributions.csv"
OOF_COLUMNS = ("patient_id", "repeat", "fold", "probability", "label")
ATTENTION_COLUMNS = ("patient_id", "cell_id", "path", "repeat", "fold", "weight")
INTERVAL_METHOD = (
    "stratified bootstrap over patients of the pooled out-of-fold predictions, "
    "averaged over repeats; percentile interval"
)


# ----------------------------------------------------------------------------- writing
def versions() -> dict[str, str]:
    """Versions of python and of the packages that change a run's numbers."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("cellbag", "numpy", "scikit-learn", "torch", "lightgbm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path`` through a temporary file and a rename."""
    io.write_json(path, doc, indent=1)


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """Write ``df`` (no index) to ``path`` through a temporary file and a rename."""
    with io.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_summary(
    run_dir: Path,
    heads: dict[str, dict],
    seed: int,
    resamples: int = RESAMPLES,
) -> pd.DataFrame:
    """Write every head's ``metrics.json``, ``comparison.csv`` and ``comparison_pairs.csv``
    from the heads' out-of-fold tables; returns the comparison table.

    ``heads[name]`` holds ``oof`` (the table written to ``oof_predictions.csv``), ``info``
    (fields copied into metrics.json: clinical, folds, repeats, ...) and ``seconds``."""
    figures, pairs = evaluate({h: d["oof"] for h, d in heads.items()}, seed, resamples)
    rows = []
    for name, d in heads.items():
        f, info, oof = figures[name], d.get("info", {}), d["oof"]
        thresholds: dict[str, Any] = {"fixed": 0.5}
        for kind in ("youden", "triage"):
            col = f"{kind}_threshold"
            if col in oof.columns:
                t = oof.groupby(["repeat", "fold"])[col].first().to_numpy(dtype=np.float64)
                thresholds[kind] = {
                    "method": info.get("threshold_method", "nested"),
                    "fold_mean": float(np.nanmean(t)),
                    "fold_min": float(np.nanmin(t)),
                    "fold_max": float(np.nanmax(t)),
                }
        if "triage" in thresholds:
            thresholds["triage"]["target_sensitivity"] = info.get("triage_sensitivity")
        doc = {
            "format": METRICS_FORMAT,
            "version": METRICS_VERSION,
            "head": name,
            **{k: v for k, v in info.items() if k not in ("threshold_method",)},
            "n_patients": f["n_patients"],
            "n_tumoral": f["n_tumoral"],
            "n_reactive": f["n_reactive"],
            "interval": {
                "method": INTERVAL_METHOD,
                "level": LEVEL,
                "resamples": resamples,
                "seed": seed,
            },
            "thresholds": thresholds,
            "calibration": {"method": info.get("calibrate"), "reliability": f["reliability"]},
            "metrics": f["metrics"],
            "best": f["best"],
            "vs_best": f["vs_best"],
            "per_fold": f["per_fold"],
        }
        write_json(run_dir / name / METRICS_FILE, doc)
        row: dict[str, Any] = {
            "head": name,
            "clinical": info.get("clinical"),
            "n_patients": f["n_patients"],
        }
        for k in METRICS:
            if k in f["metrics"]:
                m = f["metrics"][k]
                row[k] = m["value"]
                row[f"{k}_ci95_low"], row[f"{k}_ci95_high"] = m["ci95_low"], m["ci95_high"]
                row[f"{k}_fold_sd"] = m["fold_sd"]
        for k in PAIRED:
            v = f["vs_best"][k]
            row[f"{k}_vs_best"] = v["difference"]
            row[f"{k}_vs_best_ci95_low"] = v["ci95_low"]
            row[f"{k}_vs_best_ci95_high"] = v["ci95_high"]
            row[f"{k}_vs_best_p"] = v["p_value"]
        row["seconds"] = round(float(d.get("seconds", 0.0)), 3)
        rows.append(row)
    table = pd.DataFrame(rows)
    write_csv(run_dir / COMPARISON, table)
    cols = [
        "head_a",
        "head_b",
        "metric",
        "difference",
        "ci95_low",
        "ci95_high",
        "p_value",
        "verdict",
    ]
    write_csv(run_dir / PAIRS, pd.DataFrame(pairs, columns=cols))
    return table


# ----------------------------------------------------------------------------- reading
def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (one-line error naming the file otherwise)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except OSError as e:
        raise RunFolderError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(doc, dict):
        raise RunFolderError(f"{path}: expected a JSON object")
    return doc


def _read_csv(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"patient_id": str, "cell_id": str, "path": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: cannot parse {what} ({str(e).splitlines()[0]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise RunFolderError(
            f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})"
        )
    df["patient_id"] = df["patient_id"].astype(str)
    return df


def read_oof(path: Path) -> pd.DataFrame:
    """An ``oof_predictions.csv``, checked: probabilities in [0, 1], labels 0/1, one label
    per patient."""
    df = _read_csv(path, OOF_COLUMNS, "out-of-fold predictions")
    if df.empty:
        raise RunFolderError(f"{path}: no out-of-fold predictions")
    p = pd.to_numeric(df["probability"], errors="coerce")
    bad = p.isna() | (p < 0) | (p > 1)
    if bad.any():
        raise RunFolderError(
            f"{path}: probability of patient {df.loc[bad, 'patient_id'].iloc[0]} "
            "is not a number in [0, 1]"
        )
    y = pd.to_numeric(df["label"], errors="coerce")
    if not y.isin([0, 1]).all():
        bad_id = df.loc[~y.isin([0, 1]), "patient_id"].iloc[0]
        raise RunFolderError(f"{path}: label of patient {bad_id} is not 0 or 1")
    df["probability"] = p.astype("float64")
    df["label"] = y.astype("int64")
    clash = df.groupby("patient_id")["label"].nunique()
    if (clash > 1).any():
        raise RunFolderError(f"{path}: patient {clash[clash > 1].index[0]} has two labels")
    return df


def read_attention(folder: Path) -> pd.DataFrame | None:
    """A head's per-cell out-of-fold weights (``attention.csv`` or ``.parquet``), or None."""
    csv, pq = (Path(folder) / f for f in ATTENTION_FILES)
    if csv.is_file():
        df = _read_csv(csv, ATTENTION_COLUMNS, "attention weights")
        where = csv
    elif pq.is_file():
        try:
            df = pd.read_parquet(pq)
        except ImportError:
            raise RunFolderError(f"{pq}: reading Parquet needs pyarrow") from None
        missing = [c for c in ATTENTION_COLUMNS if c not in df.columns]
        if missing:
            raise RunFolderError(f"{pq}: missing column(s) {', '.join(missing)}")
        for c in ("patient_id", "cell_id", "path"):
            df[c] = df[c].astype(str)
        where = pq
    else:
        return None
    w = pd.to_numeric(df["weight"], errors="coerce")
    if w.isna().any() or (w < 0).any():
        bad = df.loc[w.isna() | (w < 0), "cell_id"].iloc[0]
        raise RunFolderError(f"{where}: weight of cell {bad} is not a number >= 0")
    df["weight"] = w.astype("float64")
    return df


def read_contributions(folder: Path) -> pd.DataFrame | None:
    """A head's per-cell out-of-fold contributions (``contributions.csv``, signed), or None."""
    path = Path(folder) / CONTRIBUTIONS_FILE
    if not path.is_file():
        return None
    df = _read_csv(path, (*ATTENTION_COLUMNS, "kind"), "per-cell contributions")
    w = pd.to_numeric(df["weight"], errors="coerce")
    if w.isna().any():
        raise RunFolderError(
            f"{path}: weight of cell {df.loc[w.isna(), 'cell_id'].iloc[0]} is not a number"
        )
    df["weight"] = w.astype("float64")
    df["kind"] = df["kind"].astype(str)
    return df


def normalize_config(c: dict[str, Any]) -> dict[str, Any]:
    """A head's config with the settings that define the run (nested under ``key``) at the
    top level."""
    key = c.get("key")
    if not isinstance(key, dict):
        return dict(c)
    return {**key, **{k: v for k, v in c.items() if k != "key"}}


def check_metrics(doc: dict[str, Any], path: Path) -> dict[str, dict]:
    """The ``metrics`` block of a metrics.json: every figure with a ``value``."""
    body = doc.get("metrics")
    found = {}
    if isinstance(body, dict):
        found = {k: v for k, v in body.items() if isinstance(v, dict) and "value" in v}
    if not found:
        raise RunFolderError(
            f"{path}: no metrics found (expected "
            '"metrics": {"roc_auc": {"value": ..., "ci95_low": ..., "ci95_high": ...}, ...}; '
            "rerun `cellbag cv` with this version)"
        )
    return found


@dataclass
class HeadResult:
    """What one head left in its folder."""

    name: str
    folder: Path
    metrics: dict[str, Any]  # the whole metrics.json
    config: dict[str, Any]  # normalised config.json
    oof: pd.DataFrame
    attention: pd.DataFrame | None

    @property
    def figures(self) -> dict[str, dict]:
        """``{figure: {value, ci95_low, ci95_high, fold_sd, ...}}``."""
        return self.metrics.get("metrics", {})


def is_head_folder(folder: Path) -> bool:
    """A head's results live here (``metrics.json`` and ``oof_predictions.csv``)."""
    return (Path(folder) / METRICS_FILE).is_file() and (Path(folder) / OOF_FILE).is_file()


def head_folders(run_dir: str | Path) -> list[Path]:
    """``RUN_DIR`` itself when it is a head folder, else its head folders (sorted)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} not found")
    if is_head_folder(run_dir):
        return [run_dir]
    folders = sorted(p for p in run_dir.iterdir() if p.is_dir() and is_head_folder(p))
    if not folders:
        raise RunFolderError(
            f"{run_dir}: no head results (not a cv run folder: expected <head>/{METRICS_FILE} "
            f"and <head>/{OOF_FILE}; run `cellbag cv ... --out {run_dir}` first)"
        )
    return folders


def read_head(folder: str | Path, attention: bool = True) -> HeadResult:
    """Read one head folder (checked)."""
    folder = Path(folder)
    for name in (METRICS_FILE, OOF_FILE):
        if not (folder / name).is_file():
            raise RunFolderError(f"{folder}: no {name} (is this a `cellbag cv` head folder?)")
    metrics = read_json(folder / METRICS_FILE)
    check_metrics(metrics, folder / METRICS_FILE)
    config = {}
    if (folder / CONFIG_FILE).is_file():
        config = normalize_config(read_json(folder / CONFIG_FILE))
    oof = read_oof(folder / OOF_FILE)
    att = read_attention(folder) if attention else None
    if att is not None:
        unknown = sorted(set(att["patient_id"]) - set(oof["patient_id"]))
        if unknown:
            raise RunFolderError(
                f"{folder}: attention.csv names patient {unknown[0]}, absent from {OOF_FILE}"
            )
    name = config.get("head") if isinstance(config.get("head"), str) else None
    return HeadResult(name or folder.name, folder, metrics, config, oof, att)


def figure(folder: Path, key: str = "roc_auc") -> float:
    """One figure's value from a head folder's metrics.json (NaN when absent)."""
    try:
        v = read_json(folder / METRICS_FILE).get("metrics", {}).get(key, {}).get("value")
    except RunFolderError:
        return float("nan")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float("nan")


def best_head(run_dir: str | Path) -> Path:
    """``RUN_DIR/<head>`` as given, or the best head of ``RUN_DIR`` by
    :data:`~cellbag.evaluate.stats.BEST_RULE`; the choice the run's ``best`` field records."""
    folders = head_folders(run_dir)
    if len(folders) == 1:
        return folders[0]
    by_name = {p.name: p for p in folders}
    return by_name[best_of({name: figure(p) for name, p in by_name.items()})]


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The normalised config.json of the run's first head (encoder, store, clinical, ...)."""
    f = head_folders(run_dir)[0]
    return normalize_config(read_json(f / CONFIG_FILE)) if (f / CONFIG_FILE).is_file() else {}


def read_comparison(run_dir: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """``comparison.csv`` and ``comparison_pairs.csv`` of a run (None when absent)."""
    out = []
    for name in (COMPARISON, PAIRS):
        p = Path(run_dir) / name
        if not p.is_file():
            out.append(None)
            continue
        try:
            out.append(pd.read_csv(p))
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise RunFolderError(f"{p}: cannot parse ({str(e).splitlines()[0]})") from None
    return out[0], out[1]


def patient_scores(oof: pd.DataFrame) -> pd.Series:
    """Mean out-of-fold probability per patient over repeats (the run's predictor)."""
    return oof.groupby("patient_id", sort=False)["probability"].mean()
