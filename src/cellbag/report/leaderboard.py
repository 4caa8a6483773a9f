"""The leaderboard across cv runs (``cellbag runs DIR...``): encoders × heads × clinical,
each metric with its interval, as a table and as a page linked from each report.

A ranking by a figure is no claim that the first beats the second: overlapping intervals
mean no demonstrated difference (each run's report has the paired comparison of its heads).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from cellbag.core.io import atomic_path, write_text
from cellbag.evaluate.run_folder import is_head_folder
from cellbag.report.cv_run import METRIC_NAMES, load_head
from cellbag.report.errors import ReportError

#: the metric the leaderboard is ranked by unless asked otherwise: the one each run's
#: ``best`` head is chosen by (run_folder.best_head), so the two answers agree
DEFAULT_METRIC = "roc_auc"
#: how deep under each DIR run folders are looked for
MAX_DEPTH = 4


def find_head_folders(dirs: list[str | Path]) -> list[Path]:
    """Every cv head folder (``metrics.json`` + ``oof_predictions.csv``) under ``dirs``."""
    found: list[Path] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ReportError(f"{root}: no such folder")
        base = len(root.parts)
        for folder, subdirs, _files in os.walk(root):
            p = Path(folder)
            if is_head_folder(p):
                found.append(p)
                subdirs[:] = []
            elif len(p.parts) - base >= MAX_DEPTH:
                subdirs[:] = []
            else:
                subdirs.sort()
    return sorted(set(found))


def collect(dirs: list[str | Path]) -> pd.DataFrame:
    """One row per head of every run under ``dirs``: run, encoder, head, clinical, and per
    figure its value (pooled out-of-fold) and interval (``lo``, ``hi``)."""
    rows = []
    for folder in find_head_folders(dirs):
        h = load_head(folder)
        cfg = h.config
        raw = h.metrics_raw if isinstance(h.metrics_raw, dict) else {}
        row: dict[str, Any] = {
            "run": str(folder.parent),
            "head": h.name,
            "encoder_id": cfg.get("encoder_id") or "",
            "clinical": raw.get("clinical", cfg.get("clinical")),
            "n_patients": raw.get("n_patients", cfg.get("n_patients")),
            "interval": _interval_text(raw.get("interval")),
            "store": cfg.get("store") or _run_store(folder.parent),
            "folder": str(folder),
            # "6 of 24": the encoder was pretrained on the images of patients it scores
            "transductive": _transductive_text(cfg.get("transductive")),
        }
        for m in h.metrics:
            row[f"{m.key}"] = m.value
            row[f"{m.key}_lo"] = m.lo
            row[f"{m.key}_hi"] = m.hi
        rows.append(row)
    if not rows:
        raise ReportError(
            f"no cv runs under {', '.join(map(str, dirs))} (run `cellbag cv STORE --out DIR` first)"
        )
    return pd.DataFrame(rows)


def _transductive_text(doc: Any) -> str:
    if isinstance(doc, dict) and doc.get("image_patients"):
        return f"{doc['image_patients']} of {doc.get('of', '?')}"
    return ""


def _interval_text(doc: Any) -> str:
    if isinstance(doc, dict):
        level = doc.get("level")
        pct = f"{100 * level:.0f}% " if isinstance(level, int | float) else ""
        return f"{pct}{doc.get('method', '')}".strip()
    return str(doc or "")


def _run_store(run: Path) -> str | None:
    p = run / "config.json"
    if p.is_file():
        try:
            c = json.loads(p.read_text())
            return c.get("store") if isinstance(c, dict) else None
        except ValueError:
            return None
    return None


def rank(table: pd.DataFrame, metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """Rows ordered by ``metric`` (best first; ties by run and head)."""
    if metric not in table.columns:
        have = [k for k in METRIC_NAMES if k in table.columns]
        raise ReportError(f"no metric {metric!r} in these runs (have: {', '.join(have)})")
    from cellbag.evaluate.metrics import LOWER_IS_BETTER

    best_first = metric in LOWER_IS_BETTER  # ascending for Brier, ECE
    t = table.sort_values(
        [metric, "run", "head"], ascending=[best_first, True, True], kind="stable"
    )
    return t.reset_index(drop=True)


def best_head(run_dir: str | Path) -> dict[str, Any] | None:
    """The row of the run's best head (the one ``run_folder.best_head`` picks, as distill
    does), for a ``next:`` line; None when the folder is no run."""
    from cellbag.evaluate import run_folder as rf

    try:
        folder = rf.best_head(run_dir)
        t = collect([folder])
    except (ReportError, rf.RunFolderError):
        return None
    return t.iloc[0].to_dict()


#: the figures the terminal table shows (the page shows them all)
KEY_FIGURES = ("roc_auc", "balanced_accuracy", "triage_spared")


def key_columns(table: pd.DataFrame, metric: str) -> list[str]:
    """The ranking figure, then the key figures the runs have."""
    keys = [metric] + [k for k in KEY_FIGURES if k != metric]
    return [k for k in keys if k in table.columns]


def metric_columns(table: pd.DataFrame) -> list[str]:
    return [k for k in METRIC_NAMES if k in table.columns] + sorted(
        c
        for c in table.columns
        if f"{c}_lo" in table.columns and c not in METRIC_NAMES and not c.endswith(("_lo", "_hi"))
    )


def write_leaderboard(table: pd.DataFrame, out: str | Path, metric: str = DEFAULT_METRIC) -> Path:
    """Write the leaderboard page (``out``) and its CSV beside it; return the page's path."""
    from cellbag.evaluate.stats import BEST_RULE
    from cellbag.report.render import page_templates

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = rank(table, metric)
    csv = out.with_suffix(".csv")
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    keys = metric_columns(table)
    rows = []
    for i, r in table.iterrows():
        report = Path(r["run"]) / "report" / "index.html"
        rows.append(
            {
                "rank": i + 1,
                "run": r["run"],
                "report": os.path.relpath(report, out.parent) if report.is_file() else None,
                "encoder_id": r["encoder_id"],
                "head": r["head"],
                "clinical": {True: "yes", False: "no"}.get(r["clinical"], "?"),
                "transductive": r.get("transductive") or "",
                "figures": {k: (r[k], r[f"{k}_lo"], r[f"{k}_hi"]) for k in keys},
            }
        )
    intervals = sorted({str(x) for x in table["interval"] if str(x) and str(x) != "nan"})
    html = (
        page_templates()
        .get_template("leaderboard.html")
        .render(
            rows=rows,
            n_runs=table["run"].nunique(),
            metric_title=METRIC_NAMES.get(metric, metric),
            note="; ".join(intervals) or "95% intervals as written by each run",
            rule=BEST_RULE,
            keys=keys,
            titles=METRIC_NAMES,
            csv=csv.name,
        )
    )
    write_text(out, html)
    return out
