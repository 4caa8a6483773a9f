"""HTML of the report: Jinja2 templates (``templates/``, autoescape on) filled from the view
objects below; the page's CSS and JavaScript are package data (``static/``) inlined into
one self-contained ``index.html``.

Every number shown also sits, at full precision, in a ``data-value`` attribute of its cell,
so the page can be sorted and a test can check the figures against the run's files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pandas as pd

from cellbag.data.clinical import DEFAULT_REFERENCE_DATE
from cellbag.data.labels import CLASS_NAMES
from cellbag.evaluate.metrics import TITLES
from cellbag.evaluate.stats import BEST_RULE, best_of
from cellbag.report.cv_run import HeadRun, Metric
from cellbag.report.explain import kind_text
from cellbag.report.thumbs import DISPLAY_SIZE

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
#: the recommended head's figures in the summary, each with a line of plain language
SUMMARY_FIGURES = {
    "roc_auc": "the chance that a tumoral patient scores above a reactive one",
    "balanced_accuracy": "the mean of sensitivity and specificity at probability 0.5",
    "triage_sensitivity": "the share of tumoral patients sent to cytometry at the triage point",
    "triage_spared": "the share of reactive patients whose cytometry could be spared",
}
#: a class with fewer labelled patients than this makes a small cohort (wide intervals)
SMALL_CLASS = 40
#: plain language beside the figures whose names say little to a clinician
GLOSSARY = (
    (
        "Brier",
        "mean squared distance between probability and outcome (0 perfect, 0.25 a coin toss)",
    ),
    ("ECE", "average gap between the stated probability and the observed share of tumoral"),
    (
        "Youden, nested",
        "at the threshold that maximises sensitivity + specificity − 1, chosen inside each "
        "training fold",
    ),
    ("triage", "at the threshold chosen in each training fold for the target sensitivity"),
)


def number_text(x: float | None, nd: int = 3) -> str:
    """A number for display (``–`` for missing)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}"


def data_value(x: float | None) -> str:
    """Full-precision value for a ``data-value`` attribute (``repr`` round-trips floats)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return repr(float(x))


def label_text(y: int | None) -> str:
    return "unknown" if y is None else f"{y} {CLASS_NAMES.get(int(y), '')}".strip()


@dataclass
class CellView:
    """A cell to show: its id, thumbnail URL (None if unreadable) and a caption (text)."""

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
    clinical: dict[str, Any] | None = None  # age, gender, lymph_count (from the store)
    triage: str | None = None  # cytometry | spared (at the triage point, most repeats)
    #: fused heads: the log-odds as base + image + clinical terms (mean over repeats)
    log_odds: dict[str, float] | None = None


@dataclass
class TestRow:
    """A patient of a ``cellbag predict`` output (no label) and its galleries."""

    patient_id: str
    probability: float
    predicted: int
    top: list[CellView]
    bottom: list[CellView]
    clinical: dict[str, Any] | None = None


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


@dataclass
class Summary:
    """The first screen: the cohort, the recommended head and why, its figures, warnings."""

    cohort: list[tuple[str, str]]
    best: str | None
    rule: str
    verdicts: list[tuple[str, bool]]  # (line, whether the pair shows a difference)
    figures: list[tuple[Metric, str]]  # (figure, plain language)
    #: (kind, text): small-cohort, transductive, zero-width, triage-missed
    warnings: list[tuple[str, str]]


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


def _by_key(metrics: list[Metric]) -> dict[str, Metric]:
    return {m.key: m for m in metrics}


def _verdicts(best: str, pairs: pd.DataFrame | None) -> list[tuple[str, bool]]:
    """The paired comparisons of ``best`` with every other head, from its side."""
    if pairs is None or pairs.empty:
        return []
    out = []
    for r in pairs.itertuples(index=False):
        if best not in (r.head_a, r.head_b):
            continue
        other = r.head_b if r.head_a == best else r.head_a
        sign = 1.0 if r.head_a == best else -1.0
        d, lo, hi = (sign * r.difference, *sorted((sign * r.ci95_low, sign * r.ci95_high)))
        shown = r.verdict != "no difference shown"
        what = TITLES.get(r.metric, r.metric)
        verdict = r.verdict if shown else f"no difference shown against {other}"
        out.append((f"{verdict} on {what}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]", shown))
    return out


def summary(
    heads: list[HeadRun],
    pairs: pd.DataFrame | None,
    cohort: list[tuple[str, str]],
    n_tumoral: int,
    n_reactive: int,
) -> Summary:
    """What a clinician reads first: the recommended head by :data:`BEST_RULE`, the paired
    verdicts that back it, its figures with intervals, and what should temper them."""
    auc = {h.name: _by_key(h.metrics).get("roc_auc") for h in heads}
    scores = {k: (m.value if m is not None else float("nan")) for k, m in auc.items()}
    best = best_of(scores) if scores and any(math.isfinite(v) for v in scores.values()) else None
    warnings: list[tuple[str, str]] = []
    if min(n_tumoral, n_reactive) < SMALL_CLASS:
        warnings.append(
            (
                "small-cohort",
                f"Small cohort: {n_tumoral} tumoral and {n_reactive} reactive labelled patients "
                f"(under {SMALL_CLASS} in a class): intervals are wide and the ranking of heads "
                "is fragile; confirm on more patients before relying on a head.",
            )
        )
    marked = next(
        (h.config["transductive"] for h in heads if isinstance(h.config.get("transductive"), dict)),
        None,
    )
    if marked is not None:
        n, of = marked.get("image_patients"), marked.get("of")
        warnings.append(
            (
                "transductive",
                f"Transductive figures: the encoder was pretrained (self-supervised) on the "
                f"images of {n} of these {of} patients, their pixels but never their labels. "
                "To the encoder they are not new patients, so these figures may be higher "
                "than on patients it never saw; pretrain on other patients' cells (the "
                "unlabelled test split) for figures that are not.",
            )
        )
    figures: list[tuple[Metric, str]] = []
    verdicts: list[tuple[str, bool]] = []
    if best is not None:
        h = next(x for x in heads if x.name == best)
        by = _by_key(h.metrics)
        figures = [(by[k], plain) for k, plain in SUMMARY_FIGURES.items() if k in by]
        verdicts = _verdicts(best, pairs)
        tri = (h.metrics_raw.get("thresholds") or {}).get("triage") or {}
        target = tri.get("target_sensitivity")
        sens = by.get("triage_sensitivity")
        if sens is not None and isinstance(target, int | float) and sens.value < target:
            spared = by.get("triage_spared")
            warnings.append(
                (
                    "triage-missed",
                    f"Triage target missed: {best} reached a sensitivity of "
                    f"{number_text(sens.value)} [{number_text(sens.lo)}, {number_text(sens.hi)}] "
                    f"at the triage point, under the target {target:.2f}; the "
                    + (
                        f"{number_text(spared.value)} of reactive patients it would spare "
                        if spared is not None
                        else "reactive patients it would spare "
                    )
                    + "come at a higher risk of missing a tumoral patient.",
                )
            )
    for h in heads:
        for m in h.metrics:
            if m.key in SUMMARY_METRICS and math.isfinite(m.lo) and m.lo == m.hi:
                warnings.append(
                    (
                        "zero-width",
                        f"Zero-width interval: {h.name}'s {m.title} is {number_text(m.value)} "
                        f"[{number_text(m.lo)}, {number_text(m.hi)}]: every resample of these "
                        "patients gives the same figure, which says 'no error in this sample', "
                        "not 'no error'.",
                    )
                )
    return Summary(cohort, best, BEST_RULE, verdicts, figures, warnings)


def _triage_rows(heads: list[HeadRun]) -> list[dict[str, Any]]:
    rows = []
    for h in heads:
        by = _by_key(h.metrics)
        if "triage_sensitivity" not in by:
            continue
        tri = (h.metrics_raw.get("thresholds") or {}).get("triage") or {}
        rows.append(
            {
                "head": h.name,
                "target": tri.get("target_sensitivity"),
                "mean": tri.get("fold_mean"),
                "min": tri.get("fold_min"),
                "max": tri.get("fold_max"),
                "sensitivity": by["triage_sensitivity"],
                "spared": by["triage_spared"],
            }
        )
    return rows


def _calibration_rows(heads: list[HeadRun]) -> list[dict[str, Any]]:
    rows = []
    for h in heads:
        by = _by_key(h.metrics)
        method = (h.metrics_raw.get("calibration") or {}).get("method") or "none"
        rows.append(
            {"head": h.name, "method": method, "brier": by.get("brier"), "ece": by.get("ece")}
        )
    return rows


@cache
def page_templates() -> Any:
    from cellbag.core.templates import environment

    env = environment("cellbag.report")
    env.filters.update(
        num=number_text,
        data_value=data_value,
        label_text=label_text,
        kind_text=kind_text,
        metric_map=_by_key,
    )
    return env


def page(
    title: str,
    run_folder: str,
    n_patients: int,
    encoder_id: str | None,
    config_items: list[tuple[str, Any]],
    encoder_items: list[tuple[str, Any]] | None,
    heads: list[HeadRun],
    roc_url: str | None,
    head_views: list[HeadView],
    top_k: int,
    notes: list[str],
    data: dict[str, Any],
    summary_view: Summary,
    pairs: pd.DataFrame | None = None,
    triage_url: str | None = None,
    calibration_url: str | None = None,
    test_view: TestView | None = None,
    runs_link: str | None = None,
) -> str:
    """The whole ``index.html``."""
    from markupsafe import Markup

    have = {m.key for h in heads for m in h.metrics}
    encoder_main = encoder_rest = None
    if encoder_items:
        encoder_main = [(k, v) for k, v in encoder_items if k in ENCODER_MAIN]
        encoder_rest = [(k, v) for k, v in encoder_items if k not in ENCODER_MAIN]
    blob = json.dumps(_no_nan(data), default=str, sort_keys=True).replace("</", "<\\/")
    show_clinical = any(p.clinical for v in head_views for p in v.patients) or bool(
        test_view and any(r.clinical for r in test_view.rows)
    )
    return (
        page_templates()
        .get_template("report.html")
        .render(
            title=title,
            run_folder=run_folder,
            n_patients=n_patients,
            encoder_id=encoder_id,
            config_main=[(k, v) for k, v in config_items if k in CONFIG_MAIN],
            config_rest=[(k, v) for k, v in config_items if k not in CONFIG_MAIN],
            encoder_main=encoder_main,
            encoder_rest=encoder_rest or [],
            heads=heads,
            summary_keys=[k for k in SUMMARY_METRICS if k in have],
            titles={**TITLES, **{m.key: m.title for h in heads for m in h.metrics}},
            glossary=GLOSSARY,
            roc_url=roc_url,
            pairs=[] if pairs is None else list(pairs.itertuples(index=False)),
            triage_rows=_triage_rows(heads),
            triage_url=triage_url,
            calibration_rows=_calibration_rows(heads),
            calibration_url=calibration_url,
            head_views=head_views,
            top_k=top_k,
            notes=notes,
            summary=summary_view,
            show_clinical=show_clinical,
            reference_date=DEFAULT_REFERENCE_DATE,
            test_view=test_view,
            runs_link=runs_link,
            size=DISPLAY_SIZE,
            data_json=Markup(blob),  # noqa: S704 - JSON of our own, "</" escaped
        )
    )


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
            "clinical": p.clinical,
            "log_odds": p.log_odds,
            "top_cells": [c.cell_id for c in p.top],
            "bottom_cells": [c.cell_id for c in p.bottom],
        }
        for p in patients
    ]


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records"))
