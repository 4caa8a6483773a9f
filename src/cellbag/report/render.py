"""HTML of the report: one self-contained page (inline CSS and a few lines of vanilla JS).

Every number shown also sits, at full precision, in a ``data-value`` attribute of its cell,
so the page can be sorted and a test can check the figures against the run's files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from typing import Any

import pandas as pd

from cellbag.evaluate.metrics import TITLES
from cellbag.report.explain import kind_text
from cellbag.report.run import HeadRun, Metric
from cellbag.report.thumbs import DISPLAY_SIZE

LABELS = {1: "tumoral", 0: "reactive"}
#: settings shown up front; the rest sit under "All settings"
CONFIG_MAIN = (
    "encoder_id",
    "encoder",
    "store",
    "clinical",
    "folds",
    "repeats",
    "seed",
    "n_patients",
)
ENCODER_MAIN = ("encoder_id", "name", "weights", "image_size", "dim", "precision", "adapter")


def esc(x: Any) -> str:
    return escape(str(x), quote=True)


def fmt(x: float | None, nd: int = 3) -> str:
    """A number for display (``–`` for missing)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}"


def dv(x: float | None) -> str:
    """Full-precision value for a ``data-value`` attribute (``repr`` round-trips floats)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return repr(float(x))


def label_text(y: int | None) -> str:
    return "unknown" if y is None else f"{y} {LABELS.get(int(y), '')}".strip()


@dataclass
class CellView:
    """A cell to show: its id, thumbnail URL (None if unreadable) and a caption."""

    cell_id: str
    url: str | None
    caption: str
    title: str
    attrs: dict[str, str] = field(default_factory=dict)
    href: str | None = None  # the original image (click-through)


@dataclass
class NeighborRow:
    query: CellView
    hits: list[CellView]


@dataclass
class PatientView:
    patient_id: str
    label: int
    probability: float
    probability_std: float
    repeats: int
    predicted: int
    correct: bool
    top: list[CellView]
    bottom: list[CellView]
    neighbors: list[NeighborRow] | None = None  # None: not asked / not available


@dataclass
class TestRow:
    """A patient of a ``cellbag predict`` output (no label) and its galleries."""

    patient_id: str
    probability: float
    predicted: int
    top: list[CellView]
    bottom: list[CellView]


@dataclass
class TestView:
    source: str
    kind: str | None
    rows: list[TestRow]


@dataclass
class HeadView:
    head: HeadRun
    patients: list[PatientView]
    confusion: dict[str, int]
    roc_url: str | None
    config: dict[str, Any]
    neighbor_note: str | None


def _kv_table(items: Iterable[tuple[str, Any]], cls: str) -> str:
    rows = "".join(
        f'<tr><th scope="row">{esc(k)}</th><td data-key="{esc(k)}">{esc(v)}</td></tr>'
        for k, v in items
    )
    return f'<table class="kv {cls}"><tbody>{rows}</tbody></table>'


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as ``a.b: value`` strings (lists and scalars JSON-encoded)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        elif isinstance(v, str):
            out[key] = v
        elif isinstance(v, float):
            out[key] = f"{v:.6g}"
        else:
            out[key] = json.dumps(v, default=str)
    return out


def _cell(c: CellView, cls: str) -> str:
    attrs = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in c.attrs.items())
    if c.url is None:
        img = '<div class="noimg">image<br>unreadable</div>'
    else:
        img = (
            f'<a href="{esc(c.href or c.url)}" title="original image"><img src="{esc(c.url)}" '
            f'alt="{esc(c.cell_id)}" width="{DISPLAY_SIZE}" height="{DISPLAY_SIZE}" '
            'loading="lazy"></a>'
        )
    return (
        f'<figure class="{cls}" data-cell-id="{esc(c.cell_id)}"{attrs} title="{esc(c.title)}">'
        f"{img}<figcaption>{c.caption}</figcaption></figure>"
    )


def _gallery(cells: list[CellView], which: str) -> str:
    if not cells:
        return '<span class="muted">–</span>'
    ids = " ".join(c.cell_id for c in cells)
    inner = "".join(_cell(c, "cell") for c in cells)
    return f'<div class="gallery {which}" data-cells="{esc(ids)}">{inner}</div>'


#: figures of the comparison table at the top (every figure is in each head's section)
SUMMARY_METRICS = (
    "roc_auc",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "triage_sensitivity",
    "triage_spared",
    "brier",
    "ece",
)


def metrics_comparison(heads: list[HeadRun]) -> str:
    """Heads × the main figures: value, 95% bootstrap interval and fold sd."""
    have = {m.key for h in heads for m in h.metrics}
    keys = [k for k in SUMMARY_METRICS if k in have]
    titles = {m.key: m.title for h in heads for m in h.metrics}
    head_row = "".join(f"<th>{esc(titles[k])}</th>" for k in keys)
    body = []
    for h in heads:
        by = {m.key: m for m in h.metrics}
        tds = []
        for k in keys:
            m = by.get(k)
            if m is None:
                tds.append("<td>–</td>")
                continue
            tds.append(
                f'<td data-head="{esc(h.name)}" data-metric="{esc(k)}" data-value="{dv(m.value)}" '
                f'data-lo="{dv(m.lo)}" data-hi="{dv(m.hi)}" data-fold-sd="{dv(m.fold_sd)}">'
                f"<b>{fmt(m.value)}</b><br>"
                f'<span class="ci">[{fmt(m.lo)}, {fmt(m.hi)}]</span><br>'
                f'<span class="muted">fold sd {fmt(m.fold_sd)}</span></td>'
            )
        body.append(
            f'<tr><th scope="row"><a href="#head-{esc(h.name)}">{esc(h.name)}</a></th>'
            f"{''.join(tds)}</tr>"
        )
    return (
        '<table id="metrics-table" class="metrics">'
        f"<thead><tr><th>Head</th>{head_row}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _metric_rows(h: HeadRun, metrics: list[Metric]) -> str:
    rows = []
    for m in metrics:
        stats = (("value", m.value), ("lo", m.lo), ("hi", m.hi), ("fold_sd", m.fold_sd))
        tds = "".join(
            f'<td data-head="{esc(h.name)}" data-metric="{esc(m.key)}" data-stat="{s}" '
            f'data-value="{dv(v)}">{fmt(v)}</td>'
            for s, v in stats
        )
        spread = f"{fmt(m.fold_min)} – {fmt(m.fold_max)}"
        rows.append(f'<tr><th scope="row">{esc(m.title)}</th>{tds}<td>{spread}</td></tr>')
    return (
        f'<table class="metrics head-metrics" data-head="{esc(h.name)}">'
        "<thead><tr><th>Figure</th><th>Value</th><th>95% low</th><th>95% high</th>"
        "<th>fold sd</th><th>fold range</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def pairs_table(pairs: pd.DataFrame | None) -> str:
    """Paired bootstrap differences between heads; "A beats B" only when the 95% interval
    of the difference excludes 0."""
    if pairs is None or pairs.empty:
        return '<p class="muted">One head: no paired comparison.</p>'
    rows = []
    for r in pairs.itertuples(index=False):
        ok = r.verdict != "no difference shown"
        rows.append(
            f'<tr data-a="{esc(r.head_a)}" data-b="{esc(r.head_b)}" data-metric="{esc(r.metric)}">'
            f"<td>{esc(r.head_a)} − {esc(r.head_b)}</td><td>{esc(TITLES.get(r.metric, r.metric))}</td>"
            f'<td data-value="{dv(r.difference)}">{fmt(r.difference)}</td>'
            f'<td class="ci">[{fmt(r.ci95_low)}, {fmt(r.ci95_high)}]</td>'
            f'<td data-value="{dv(r.p_value)}">{fmt(r.p_value)}</td>'
            f'<td class="{"ok" if ok else "muted"}">{esc(r.verdict)}</td></tr>'
        )
    return (
        '<table id="pairs-table" class="metrics">'
        "<thead><tr><th>Pair</th><th>Figure</th><th>Difference</th><th>95% interval</th>"
        "<th>p</th><th>Verdict</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def stats_sections(
    heads: list[HeadRun],
    pairs: pd.DataFrame | None,
    triage_url: str | None,
    calibration_url: str | None,
) -> str:
    """The comparison, triage and calibration sections of the page."""
    parts = [
        '<section id="comparison"><h2>Paired comparison of heads</h2>',
        '<p class="muted">Differences on the same bootstrap resamples of the patients; '
        "a head beats another only when the 95% interval of the difference excludes 0.</p>",
        pairs_table(pairs),
        "</section>",
        '<section id="triage"><h2>Triage for flow cytometry</h2><div class="row"><div>',
    ]
    rows = []
    for h in heads:
        by = {m.key: m for m in h.metrics}
        tri = (h.metrics_raw.get("thresholds") or {}).get("triage") or {}
        if "triage_sensitivity" not in by:
            continue
        s, sp = by["triage_sensitivity"], by["triage_spared"]
        rows.append(
            f'<tr data-head="{esc(h.name)}"><th scope="row">{esc(h.name)}</th>'
            f"<td>{fmt(tri.get('target_sensitivity'), 2)}</td>"
            f"<td>{fmt(tri.get('fold_mean'))} ({fmt(tri.get('fold_min'))}–{fmt(tri.get('fold_max'))})</td>"
            f'<td data-value="{dv(s.value)}">{fmt(s.value)} [{fmt(s.lo)}, {fmt(s.hi)}]</td>'
            f'<td data-value="{dv(sp.value)}">{fmt(sp.value)} [{fmt(sp.lo)}, {fmt(sp.hi)}]</td></tr>'
        )
    if rows:
        parts.append(
            '<p class="muted">The threshold is chosen in each training fold (inner out-of-fold '
            "predictions) for the target sensitivity, then applied to the held-out fold. "
            "Spared: reactive patients below the threshold, whose cytometry could be spared.</p>"
            '<table id="triage-table" class="metrics"><thead><tr><th>Head</th><th>Target</th>'
            "<th>Threshold, fold mean (range)</th><th>Sensitivity [95%]</th>"
            f"<th>Spared [95%]</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    else:
        parts.append('<p class="muted">This run has no triage figures (--inner-folds 0).</p>')
    parts.append("</div>")
    if triage_url:
        parts.append(f'<div><img class="fig" src="{esc(triage_url)}" alt="Triage curve"></div>')
    parts.append(
        '</div></section><section id="calibration"><h2>Calibration</h2><div class="row"><div>'
    )
    rows = []
    for h in heads:
        by = {m.key: m for m in h.metrics}
        method = (h.metrics_raw.get("calibration") or {}).get("method") or "none"
        cells = "".join(
            f'<td data-value="{dv(by[k].value)}">{fmt(by[k].value)} [{fmt(by[k].lo)}, {fmt(by[k].hi)}]</td>'
            if k in by
            else "<td>–</td>"
            for k in ("brier", "ece")
        )
        rows.append(
            f'<tr data-head="{esc(h.name)}"><th scope="row">{esc(h.name)}</th><td>{esc(method)}</td>{cells}</tr>'
        )
    parts.append(
        '<table id="calibration-table" class="metrics"><thead><tr><th>Head</th><th>Calibration</th>'
        f"<th>Brier [95%]</th><th>ECE [95%]</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    if calibration_url:
        parts.append(
            f'<div><img class="fig" src="{esc(calibration_url)}" alt="Reliability curves"></div>'
        )
    parts.append("</div></section>")
    return "".join(parts)


def _confusion(h: HeadRun, c: dict[str, int]) -> str:
    def td(key: str, ok: bool) -> str:
        return f'<td class="{"ok" if ok else "bad"}" data-cm="{key}" data-value="{c[key]}">{c[key]}</td>'

    return (
        f'<table class="confusion" data-head="{esc(h.name)}" data-threshold="{dv(h.threshold)}">'
        f"<caption>Confusion at threshold {fmt(h.threshold, 2)} (mean OOF probability per patient)</caption>"
        "<thead><tr><th></th><th>predicted 1 tumoral</th><th>predicted 0 reactive</th></tr></thead>"
        f"<tbody><tr><th scope='row'>true 1 tumoral</th>{td('tp', True)}{td('fn', False)}</tr>"
        f"<tr><th scope='row'>true 0 reactive</th>{td('fp', False)}{td('tn', True)}</tr></tbody>"
        "</table>"
    )


def _neighbors_block(head: str, p: PatientView) -> str:
    rows = []
    for r in p.neighbors or []:
        hits = "".join(_cell(c, "cell hit") for c in r.hits) or '<span class="muted">none</span>'
        rows.append(
            f'<div class="nn-row" data-query="{esc(r.query.cell_id)}">'
            f'<div class="nn-query">{_cell(r.query, "cell query")}</div>'
            f'<div class="nn-arrow">→</div><div class="gallery hits">{hits}</div></div>'
        )
    return (
        f'<div class="nn-patient" id="nn-{esc(head)}-{esc(p.patient_id)}" '
        f'data-head="{esc(head)}" data-patient="{esc(p.patient_id)}">'
        f"<h4>{esc(p.patient_id)}: label {esc(label_text(p.label))}, "
        f"mean OOF probability {fmt(p.probability)}</h4>{''.join(rows)}</div>"
    )


def _patients(v: HeadView, top_k: int) -> str:
    h = v.head
    has_att = h.cell_kind is not None
    rows = []
    for p in v.patients:
        mark = "✓" if p.correct else "✗"
        nn_link = (
            f' <a href="#nn-{esc(h.name)}-{esc(p.patient_id)}" title="look-alike cells">look-alikes</a>'
            if p.neighbors
            else ""
        )
        galleries = (
            f'<td class="g">{_gallery(p.top, "top")}</td><td class="g">{_gallery(p.bottom, "bottom")}</td>'
            if has_att
            else ""
        )
        rows.append(
            f'<tr data-patient="{esc(p.patient_id)}" data-label="{p.label}" '
            f'data-correct="{int(p.correct)}" class="{"ok" if p.correct else "bad"}">'
            f'<td data-value="{esc(p.patient_id)}">{esc(p.patient_id)}</td>'
            f'<td data-value="{p.label}">{esc(label_text(p.label))}</td>'
            f'<td data-col="probability" data-value="{dv(p.probability)}" '
            f'title="mean of {p.repeats} out-of-fold prediction(s)">{fmt(p.probability)}'
            f'<div class="bar"><span style="width:{100 * p.probability:.1f}%"></span></div></td>'
            f'<td data-col="probability_std" data-value="{dv(p.probability_std)}">{fmt(p.probability_std)}</td>'
            f'<td data-col="predicted" data-value="{p.predicted}">{p.predicted}</td>'
            f'<td data-col="correct" data-value="{int(p.correct)}" class="{"ok" if p.correct else "bad"}">'
            f"{mark}{nn_link}</td>"
            f"{galleries}</tr>"
        )
    gal_heads = (
        f"<th>Top {top_k} cells ({esc(kind_text(h.cell_kind, 'top'))})</th>"
        f"<th>Bottom {top_k} cells ({esc(kind_text(h.cell_kind, 'bottom'))})</th>"
        if has_att
        else ""
    )
    controls = (
        f'<div class="controls" data-for="pt-{esc(h.name)}">'
        '<input type="search" placeholder="filter patient id…" class="f-text" aria-label="filter">'
        '<select class="f-sel" aria-label="show"><option value="all">all patients</option>'
        '<option value="wrong">misclassified</option><option value="right">correct</option>'
        '<option value="y1">label 1 tumoral</option><option value="y0">label 0 reactive</option>'
        '</select> <span class="count"></span></div>'
    )
    return (
        controls + '<div class="scroll">'
        f'<table id="pt-{esc(h.name)}" class="patients sortable" data-head="{esc(h.name)}">'
        "<thead><tr>"
        '<th data-sort="text">Patient</th><th data-sort="num">Label</th>'
        '<th data-sort="num" title="out-of-fold probability of class 1, mean over repeats">'
        'Probability</th><th data-sort="num" title="std of the probability over repeats">Std</th>'
        '<th data-sort="num">Predicted</th>'
        f'<th data-sort="num">Correct</th>{gal_heads}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def head_section(v: HeadView, top_k: int) -> str:
    h = v.head
    parts = [
        f'<section class="head" id="head-{esc(h.name)}" data-head="{esc(h.name)}">',
        f"<h2>Head <code>{esc(h.name)}</code></h2>",
        '<div class="row"><div>',
        "<h3>Figures (pooled out-of-fold, 95% bootstrap interval over patients)</h3>",
        _metric_rows(h, h.metrics),
        _confusion(h, v.confusion),
        "</div>",
    ]
    if v.roc_url:
        parts.append(
            f'<div><h3>ROC (from the run)</h3><img class="roc" src="{esc(v.roc_url)}" '
            f'alt="ROC of {esc(h.name)}"></div>'
        )
    if v.config:
        parts.append(
            "<div><h3>Head configuration</h3>"
            + _kv_table(v.config.items(), "head-config")
            + "</div>"
        )
    parts.append("</div>")
    parts.append("<h3>Patients (out-of-fold)</h3>")
    if h.cell_kind is None:
        parts.append(
            '<p class="muted">The run holds no per-cell scores for this head: no cell galleries '
            "(rerun <code>cellbag cv</code> with this version to get them).</p>"
        )
    else:
        parts.append(
            f'<p class="muted explain" data-kind="{esc(h.cell_kind)}">Galleries '
            f"({esc(h.cell_kind)}): {esc(kind_text(h.cell_kind, 'what'))}. "
            "Click a cell for its original image.</p>"
        )
    parts.append(_patients(v, top_k))
    wrong = [p for p in v.patients if not p.correct]
    parts.append(
        f"<h3>Misclassified patients: look-alike cells in other patients ({len(wrong)})</h3>"
    )
    if v.neighbor_note:
        parts.append(f'<p class="muted nn-note">{v.neighbor_note}</p>')
    blocks = [_neighbors_block(h.name, p) for p in wrong if p.neighbors]
    if blocks:
        parts.append(
            '<p class="muted">Each of the patient\'s top cells (orange) and its nearest '
            "cells in other patients (cosine similarity), framed by that patient's label: "
            '<span class="lab1">1 tumoral</span>, <span class="lab0">0 reactive</span>, '
            "none when unknown (test split).</p>"
        )
    parts.append(f'<div class="nn">{"".join(blocks)}</div>')
    parts.append("</section>")
    return "\n".join(parts)


def test_section(v: TestView, top_k: int) -> str:
    """Patients of a ``cellbag predict`` output: probability, prediction and galleries."""
    has = v.kind is not None
    rows = []
    for r in v.rows:
        gal = (
            f'<td class="g">{_gallery(r.top, "top")}</td>'
            f'<td class="g">{_gallery(r.bottom, "bottom")}</td>'
            if has
            else ""
        )
        rows.append(
            f'<tr data-patient="{esc(r.patient_id)}" data-predicted="{r.predicted}">'
            f'<td data-value="{esc(r.patient_id)}">{esc(r.patient_id)}</td>'
            f'<td data-col="probability" data-value="{dv(r.probability)}">{fmt(r.probability)}'
            f'<div class="bar"><span style="width:{100 * (r.probability if r.probability == r.probability else 0):.1f}%"></span></div></td>'
            f'<td data-col="predicted" data-value="{r.predicted}">{esc(label_text(r.predicted))}</td>'
            f"{gal}</tr>"
        )
    gal_heads = (
        f"<th>Top {top_k} cells ({esc(kind_text(v.kind, 'top'))})</th>"
        f"<th>Bottom {top_k} cells ({esc(kind_text(v.kind, 'bottom'))})</th>"
        if has
        else ""
    )
    what = (
        f'<p class="muted explain" data-kind="{esc(v.kind)}">Galleries ({esc(v.kind)}): '
        f"{esc(kind_text(v.kind, 'what'))}; from the fitted model's members.</p>"
        if has
        else '<p class="muted">No per-cell table beside the predictions '
        "(<code>&lt;submission&gt;_cells.csv</code>, written by <code>cellbag predict</code>).</p>"
    )
    return (
        '<section id="test" class="test"><h2>Predicted patients</h2>'
        f'<p class="muted">From <code>{esc(v.source)}</code> ({len(v.rows)} patients, no labels).</p>'
        f"{what}"
        '<div class="scroll"><table id="pt-test" class="patients sortable" data-head="test">'
        '<thead><tr><th data-sort="text">Patient</th><th data-sort="num">Probability</th>'
        f'<th data-sort="num">Predicted</th>{gal_heads}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


CSS = """
:root{--ok:#e7f5ea;--bad:#fde8e8;--fg:#1d2330;--mut:#667085;--line:#d8dde6;--acc:#3b5bdb}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0;background:#f7f8fa}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px} header p{margin:4px 0 0;color:#c9d1e0}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:8px 24px;z-index:5}
nav a{margin-right:14px;color:var(--acc);text-decoration:none}
main{padding:8px 16px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px;margin:14px 0}
h2{font-size:17px;margin:4px 0 10px} h3{font-size:14px;margin:14px 0 6px} h4{font-size:13px;margin:10px 0 4px}
table{border-collapse:collapse;margin:4px 0 10px}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:middle}
thead th{background:#eef1f6}
table.metrics td{text-align:right;white-space:nowrap}
table.kv th{background:#f3f5f9;font-weight:500}
table.kv td{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all;max-width:560px}
.muted{color:var(--mut)} .ci{color:var(--mut);font-size:12px}
.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
table.confusion td{text-align:center;font-size:16px;min-width:90px}
td.ok{background:var(--ok)} td.bad{background:var(--bad)}
table.patients th[data-sort]{cursor:pointer;user-select:none}
table.patients th[data-sort]:after{content:" ⇅";color:var(--mut);font-size:11px}
.bar{height:4px;background:#e9ecf2;border-radius:2px;margin-top:2px;width:70px}
.bar span{display:block;height:4px;background:var(--acc);border-radius:2px}
.gallery{display:flex;flex-wrap:wrap;gap:3px}
figure.cell{margin:0;text-align:center;font-size:10px;color:var(--mut)}
figure.cell img{display:block;width:128px;height:128px;border-radius:3px;border:1px solid var(--line)}
figure.query img{outline:2px solid #e8590c}
.noimg{width:128px;height:128px;border:1px dashed var(--mut);font-size:9px;display:flex;align-items:center;justify-content:center}
table.patients td,table.patients th{white-space:nowrap;padding:3px 6px}
table.patients .gallery{flex-wrap:wrap;width:528px}
table.patients td.g{vertical-align:top}
.scroll{overflow-x:auto}
figure.hit[data-label="1"] img{border:2px solid #c92a2a}
figure.hit[data-label="0"] img{border:2px solid #2b8a3e}
.lab1{color:#c92a2a;font-weight:600}.lab0{color:#2b8a3e;font-weight:600}
.controls{margin:6px 0}.controls input{padding:3px 6px;width:200px}
.nn-row{display:flex;align-items:center;gap:8px;margin:4px 0}
.nn-arrow{font-size:20px;color:var(--mut)}
img.fig{max-width:440px;width:100%;border:1px solid var(--line);border-radius:4px}
img.roc{max-width:340px;width:100%;border:1px solid var(--line);border-radius:4px}
details summary{cursor:pointer;color:var(--acc);margin:6px 0}
#img-check{background:var(--bad);padding:8px 24px}
"""

JS = r"""
(function(){
  function val(td){var v=td.getAttribute('data-value');return v===null?td.textContent.trim():v;}
  document.querySelectorAll('table.sortable').forEach(function(t){
    t.querySelectorAll('th[data-sort]').forEach(function(th,i){
      th.addEventListener('click',function(){
        var num=th.getAttribute('data-sort')==='num', asc=th.getAttribute('data-dir')!=='asc';
        t.querySelectorAll('th').forEach(function(o){o.removeAttribute('data-dir');});
        th.setAttribute('data-dir',asc?'asc':'desc');
        var body=t.tBodies[0], rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(a,b){
          var x=val(a.cells[i]),y=val(b.cells[i]);
          if(num){x=parseFloat(x);y=parseFloat(y);x=isNaN(x)?-Infinity:x;y=isNaN(y)?-Infinity:y;}
          return (x<y?-1:x>y?1:0)*(asc?1:-1);
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  document.querySelectorAll('.controls').forEach(function(c){
    var t=document.getElementById(c.getAttribute('data-for'));
    var txt=c.querySelector('.f-text'), sel=c.querySelector('.f-sel'), cnt=c.querySelector('.count');
    function apply(){
      var q=txt.value.trim().toLowerCase(), s=sel.value, n=0;
      Array.prototype.forEach.call(t.tBodies[0].rows,function(r){
        var ok=(!q||r.getAttribute('data-patient').toLowerCase().indexOf(q)>=0)&&
          (s==='all'||(s==='wrong'&&r.getAttribute('data-correct')==='0')||
           (s==='right'&&r.getAttribute('data-correct')==='1')||
           (s==='y1'&&r.getAttribute('data-label')==='1')||(s==='y0'&&r.getAttribute('data-label')==='0'));
        r.style.display=ok?'':'none'; if(ok)n++;
      });
      cnt.textContent=n+' of '+t.tBodies[0].rows.length+' patients';
    }
    txt.addEventListener('input',apply); sel.addEventListener('change',apply); apply();
  });
  window.addEventListener('load',function(){
    var imgs=document.images, broken=[];
    for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0)broken.push(imgs[i].getAttribute('src'));}
    var el=document.getElementById('img-check');
    el.setAttribute('data-total',String(imgs.length));
    el.setAttribute('data-broken',JSON.stringify(broken));
    el.setAttribute('data-done','1');
    if(broken.length){el.hidden=false;el.textContent=broken.length+' image(s) failed to load: '+broken.slice(0,5).join(', ');}
  });
})();
"""


def page(
    title: str,
    subtitle: str,
    config_items: list[tuple[str, Any]],
    encoder_items: list[tuple[str, Any]] | None,
    heads: list[HeadRun],
    roc_url: str | None,
    head_views: list[HeadView],
    top_k: int,
    notes: list[str],
    data: dict[str, Any],
    test_view: TestView | None = None,
    runs_link: str | None = None,
    stats_html: str = "",
) -> str:
    """The whole ``index.html``."""
    nav = "".join(
        [
            '<a href="#config">Configuration</a>',
            '<a href="#metrics">Metrics</a>',
            '<a href="#roc">ROC</a>',
            '<a href="#comparison">Comparison</a>',
            '<a href="#triage">Triage</a>',
            '<a href="#calibration">Calibration</a>',
            *(f'<a href="#head-{esc(h.name)}">{esc(h.name)}</a>' for h in heads),
            '<a href="#test">Predicted patients</a>' if test_view is not None else "",
            f'<a id="runs-link" href="{esc(runs_link)}">All runs (leaderboard)</a>'
            if runs_link
            else "",
        ]
    )
    cfg_main = [(k, v) for k, v in config_items if k in CONFIG_MAIN]
    cfg_rest = [(k, v) for k, v in config_items if k not in CONFIG_MAIN]
    if encoder_items:
        enc_main = [(k, v) for k, v in encoder_items if k in ENCODER_MAIN]
        enc_rest = [(k, v) for k, v in encoder_items if k not in ENCODER_MAIN]
        enc = "<div><h3>Encoder</h3>" + _kv_table(enc_main, "encoder") + "</div>"
    else:
        enc_rest = []
        enc = (
            '<div><h3>Encoder</h3><p class="muted">No encoder record in the run: pass '
            "<code>--store STORE</code> to list it.</p></div>"
        )
    more = ""
    if cfg_rest or enc_rest:
        more = (
            '<details><summary>All settings</summary><div class="row">'
            + (
                f"<div><h3>Run</h3>{_kv_table(cfg_rest, 'run-config-more')}</div>"
                if cfg_rest
                else ""
            )
            + (
                f"<div><h3>Encoder</h3>{_kv_table(enc_rest, 'encoder-more')}</div>"
                if enc_rest
                else ""
            )
            + "</div></details>"
        )
    config_html = (
        f'<div class="row"><div><h3>Run</h3>{_kv_table(cfg_main, "run-config")}</div>{enc}</div>'
        + more
    )
    notes_html = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    blob = json.dumps(_no_nan(data), default=str, sort_keys=True).replace("</", "<\\/")
    roc = (
        f'<img class="fig" src="{esc(roc_url)}" alt="ROC curves of every head">'
        if roc_url
        else '<p class="muted">No ROC curve (a single class in the predictions).</p>'
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><p>{subtitle}</p></header>
<nav>{nav}</nav>
<div id="img-check" hidden></div>
<main>
{notes_html}
<section id="config"><h2>Run configuration</h2>{config_html}</section>
<section id="results"><div class="row">
<div id="metrics"><h2>Metrics per head</h2>
<p class="muted">value on the pooled out-of-fold predictions (mean over repeats per
patient); [95% bootstrap interval over patients]; fold sd: spread of the folds, not an interval</p>
{metrics_comparison(heads)}</div>
<div id="roc"><h2>ROC curves</h2>{roc}</div></div></section>
{stats_html}
{"".join(head_section(v, top_k) for v in head_views)}
{test_section(test_view, top_k) if test_view is not None else ""}
</main>
<script type="application/json" id="cellbag-data">{blob}</script>
<script>{JS}</script>
</body>
</html>
"""


def _no_nan(x: Any) -> Any:
    """NaN/inf become null, so the embedded data is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_no_nan(v) for v in x]
    return x


def patient_records(patients: list[PatientView]) -> list[dict[str, Any]]:
    """The per-patient figures as JSON-ready records (embedded in the page)."""
    return [
        {
            "patient_id": p.patient_id,
            "label": p.label,
            "probability": p.probability,
            "probability_std": p.probability_std,
            "repeats": p.repeats,
            "predicted": p.predicted,
            "correct": p.correct,
            "top_cells": [c.cell_id for c in p.top],
            "bottom_cells": [c.cell_id for c in p.bottom],
        }
        for p in patients
    ]


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records"))
