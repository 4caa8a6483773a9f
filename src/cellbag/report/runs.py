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
from cellbag.report.errors import ReportError
from cellbag.report.run import METRIC_NAMES, load_head

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
    from cellbag.report.render import dv, esc, fmt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = rank(table, metric)
    csv = out.with_suffix(".csv")
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    keys = metric_columns(table)
    head = "".join(f'<th data-sort="num">{esc(METRIC_NAMES.get(k, k))}</th>' for k in keys)
    body = []
    for i, r in table.iterrows():
        report = Path(r["run"]) / "report" / "index.html"
        run_cell = esc(r["run"])
        if report.is_file():
            run_cell = f'<a href="{esc(os.path.relpath(report, out.parent))}">{run_cell}</a>'
        tds = "".join(
            f'<td data-metric="{esc(k)}" data-value="{dv(r[k])}" data-lo="{dv(r[f"{k}_lo"])}" '
            f'data-hi="{dv(r[f"{k}_hi"])}"><b>{fmt(r[k])}</b> '
            f'<span class="ci">[{fmt(r[f"{k}_lo"])}, {fmt(r[f"{k}_hi"])}]</span></td>'
            for k in keys
        )
        clin = {True: "yes", False: "no"}.get(r["clinical"], "?")
        body.append(
            f'<tr data-rank="{i + 1}" data-run="{esc(r["run"])}" data-head="{esc(r["head"])}">'
            f'<td data-value="{i + 1}">{i + 1}</td><td>{run_cell}</td>'
            f"<td><code>{esc(r['encoder_id'])}</code></td><td>{esc(r['head'])}</td>"
            f"<td>{clin}</td>{tds}</tr>"
        )
    intervals = sorted({str(x) for x in table["interval"] if str(x) and str(x) != "nan"})
    note = "; ".join(intervals) or "95% intervals as written by each run"
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cellbag runs: leaderboard</title>
<style>{_CSS}</style></head>
<body><header><h1>cellbag runs: which encoder and head?</h1>
<p>{len(table)} head(s) in {table["run"].nunique()} run(s), ranked by
{esc(METRIC_NAMES.get(metric, metric))}</p></header>
<main><p class="muted">Value on each run's pooled out-of-fold predictions, interval in brackets
({esc(note)}). A rank is not a verdict: overlapping intervals mean no demonstrated
difference; each run's report compares its heads on the same patients.</p>
<table id="leaderboard" class="sortable"><thead><tr><th data-sort="num">#</th>
<th data-sort="text">Run</th><th data-sort="text">Encoder</th><th data-sort="text">Head</th>
<th data-sort="text">Clinical</th>{head}</tr></thead>
<tbody>{"".join(body)}</tbody></table>
<p class="muted">Table: <a href="{esc(csv.name)}">{esc(csv.name)}</a></p></main>
<script>{_JS}</script></body></html>
"""
    write_text(out, html)
    return out


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#1d2330;margin:0;background:#f7f8fa}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d1e0}main{padding:8px 24px 40px}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #d8dde6;padding:4px 8px}
thead th{background:#eef1f6;cursor:pointer}td[data-metric]{text-align:right;white-space:nowrap}
.muted,.ci{color:#667085}.ci{font-size:12px}code{font-size:12px}
"""
_JS = r"""
document.querySelectorAll('table.sortable th[data-sort]').forEach(function(th,i){
  th.addEventListener('click',function(){
    var t=th.closest('table'),num=th.getAttribute('data-sort')==='num',asc=th.getAttribute('data-dir')!=='asc';
    th.setAttribute('data-dir',asc?'asc':'desc');
    var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
    rows.sort(function(x,y){var a=x.cells[i].getAttribute('data-value')||x.cells[i].textContent,
      c=y.cells[i].getAttribute('data-value')||y.cells[i].textContent;
      if(num){a=parseFloat(a);c=parseFloat(c);}return (a<c?-1:a>c?1:0)*(asc?1:-1);});
    rows.forEach(function(r){b.appendChild(r);});});});
"""
