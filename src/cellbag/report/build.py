"""Assemble the report of a cv run: figures, thumbnails, look-alike cells, ``index.html``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from cellbag.core.io import file_head_contains, refuse_foreign_folder, write_text
from cellbag.data.clinical import has_clinical_values, raw_clinical
from cellbag.data.cohort import natural_key
from cellbag.report import explain, render
from cellbag.report.cv_run import HeadRun, Run, load_run
from cellbag.report.errors import ReportError
from cellbag.report.figures import calibration_figure, roc_figure, triage_figure
from cellbag.report.neighbors import NeighborFinder
from cellbag.report.thumbs import NO_IMAGE, Thumbnails

#: bookkeeping fields of a store's encoder record, not worth a reader's time
_ENCODER_SKIP = {
    "arrays",
    "generation",
    "completion_id",
    "done_blocks",
    "n_blocks",
    "chunk_rows",
    "block_rows",
    "encoder_id",
}
#: keys shown first in the run configuration table
_CONFIG_FIRST = ("encoder_id", "encoder", "store", "clinical", "folds", "repeats", "seed")
#: config entries not shown as configuration (the encoder gets its own table)
_CONFIG_SKIP = ("encoder_info", "state", "head")


def _open_store(store: Any) -> Any:
    if store is None or hasattr(store, "cells"):
        return store
    from cellbag.store import Store

    return Store.open(store, mode="r")


def _split_config(run: Run) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Configuration shared by every head (plus the run's own) and what each head adds."""

    def shown(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k not in _CONFIG_SKIP}

    flat = [render.flatten(shown(h.config)) for h in run.heads]
    common: dict[str, str] = dict(render.flatten(shown(run.config)))
    if flat:
        for k, v in flat[0].items():
            if all(f.get(k) == v for f in flat[1:]):
                common.setdefault(k, v)
    own = {
        h.name: {k: v for k, v in f.items() if k not in common}
        for h, f in zip(run.heads, flat, strict=True)
    }
    ordered = {k: common[k] for k in _CONFIG_FIRST if k in common}
    ordered.update({k: common[k] for k in sorted(common) if k not in ordered})
    return ordered, own


def _cell_view(thumbs: Thumbnails, row: Any, attrs: dict[str, str], caption: str, title: str):
    url = thumbs.get(str(row.cell_id), "" if pd.isna(row.path) else str(row.path))
    view = render.CellView(str(row.cell_id), url, caption, title, attrs)
    view.href = thumbs.original(str(row.cell_id))
    return view


def _weight_view(thumbs: Thumbnails, row: Any, kind: str | None = "attention") -> render.CellView:
    short, title = explain.caption(kind, float(row.weight), int(row.n_cells))
    return _cell_view(
        thumbs,
        row,
        {"weight": render.data_value(float(row.weight))},
        short,
        f"{row.cell_id} · {title}",
    )


def _drop_unreadable(views: list[render.HeadView], thumbs: Thumbnails, extra: list) -> None:
    """Cells whose image could not be read show a placeholder, not a broken link."""
    cells: list[render.CellView] = list(extra)
    for v in views:
        for p in v.patients:
            cells += p.top + p.bottom
            for r in p.neighbors or []:
                cells += [r.query, *r.hits]
    for c in cells:
        if c.cell_id in thumbs.missing:
            c.url = c.href = None


def _hit_view(thumbs: Thumbnails, row: Any) -> render.CellView:
    y = None if pd.isna(row.label) else int(row.label)
    lab = "?" if y is None else str(y)
    score = "" if pd.isna(row.score) else f" · {row.score:.2f}"
    kind = f" {row.score_kind}" if row.score_kind else ""
    return _cell_view(
        thumbs,
        row,
        {"patient": str(row.patient_id), "label": "" if y is None else str(y)},
        f"{row.patient_id} · y={lab}{score}",
        f"{row.cell_id} · patient {row.patient_id} · label {render.label_text(y)}"
        f" ({row.split or 'split ?'}){kind}{score}",
    )


def _head_view(
    h: HeadRun,
    out: Path,
    thumbs: Thumbnails,
    top_k: int,
    finder: NeighborFinder | None,
    neighbor_note: str | None,
    n_queries: int,
    n_neighbors: int,
    head_config: dict[str, str],
    progress: Callable[[str], None],
    clinical: dict[str, dict[str, Any]],
) -> render.HeadView:
    table = h.patient_table()
    table = table.iloc[
        sorted(range(len(table)), key=lambda i: natural_key(table["patient_id"].iloc[i]))
    ]
    galleries = h.top_cells(top_k)
    kind = h.cell_kind
    triage = _triage_calls(h.oof)
    patients: list[render.PatientView] = []
    for r in table.itertuples(index=False):
        pid = str(r.patient_id)
        top_df, bottom_df = galleries.get(pid, (None, None))
        top = [] if top_df is None else [_weight_view(thumbs, c, kind) for c in top_df.itertuples()]
        bottom = (
            []
            if bottom_df is None
            else [_weight_view(thumbs, c, kind) for c in bottom_df.itertuples()]
        )
        nn: list[render.NeighborRow] | None = None
        if finder is not None and not bool(r.correct) and top_df is not None:
            progress(f"{h.name}: look-alike cells of {pid}")
            nn = []
            for c, view in zip(top_df.head(n_queries).itertuples(), top, strict=False):
                hits = finder.query(str(c.cell_id), n_neighbors)
                nn.append(
                    render.NeighborRow(view, [_hit_view(thumbs, x) for x in hits.itertuples()])
                )
        patients.append(
            render.PatientView(
                pid,
                int(r.label),
                float(r.probability),
                float(r.probability_std),
                int(r.repeats),
                int(r.predicted),
                bool(r.correct),
                top,
                bottom,
                nn,
                clinical.get(pid),
                triage.get(pid),
                _log_odds(r),
            )
        )
    roc_url = None
    if h.roc_png is not None:
        roc_url = f"heads/{h.name}_roc.png"
        dest = out / roc_url
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(h.roc_png, dest)
    note = neighbor_note
    if kind is None:
        note = "Look-alike cells need per-cell scores (the head's top cells are the queries)."
    return render.HeadView(h, patients, h.confusion(), roc_url, head_config, note)


def write_report(
    run_dir: str | Path,
    out: str | Path,
    store: Any = None,
    top_k: int = 8,
    n_queries: int = 3,
    n_neighbors: int = 5,
    progress: Callable[[str], None] | None = None,
    predictions: str | Path | None = None,
    show_progress: bool = False,
) -> Path:
    """Write the static HTML report of a cv run to ``out/index.html`` (plus figures and
    thumbnails beside it) and return the path of ``index.html``.

    ``store`` (a path, URL or open ``Store``) adds the encoder's details and, for each
    misclassified patient, the nearest cells of other patients to its ``n_queries`` top cells.
    ``predictions`` (a ``cellbag predict`` submission CSV) adds the predicted patients with
    their galleries. ``show_progress``: a progress display while thumbnails are written.
    """
    if top_k < 1:
        raise ReportError(f"top_k must be at least 1, got {top_k}")
    progress = progress or (lambda _msg: None)
    run = load_run(run_dir)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"report folder {out} is a file")
    refuse_foreign_folder(out, ours=is_report_folder, what="cellbag report", error=ReportError)
    out.mkdir(parents=True, exist_ok=True)
    store = _open_store(store)

    encoder_id = run.encoder_id
    notes: list[str] = []
    encoder_items: list[tuple[str, Any]] | None = None
    finder: NeighborFinder | None = None
    neighbor_note: str | None = None
    if store is None:
        neighbor_note = "Pass --store STORE (the run's feature store) to list look-alike cells."
        if run.encoder_info:
            shown = {k: v for k, v in run.encoder_info.items() if k not in _ENCODER_SKIP}
            encoder_items = [("encoder_id", encoder_id), *render.flatten(shown).items()]
    elif encoder_id is None:
        raise ReportError(f"{run.folder}: the run's config.json names no encoder (encoder_id)")
    else:
        if encoder_id not in store.encoders():
            raise ReportError(
                f"store {store.path} has no encoder {encoder_id} (the run's encoder); "
                "was the run made from another store?"
            )
        info = store.encoder_info(encoder_id)
        shown = {k: v for k, v in info.items() if k not in _ENCODER_SKIP}
        encoder_items = [("encoder_id", encoder_id), *render.flatten(shown).items()]
        try:
            finder = NeighborFinder(store, encoder_id)
        except ImportError as e:
            neighbor_note = f"Retrieval is not available in this installation ({e})."

    common, own = _split_config(run)
    patients = None if store is None else store.patients()
    clinical = _clinical_values(patients)
    thumbs = Thumbnails(out)
    views = []
    for h in run.heads:
        progress(f"{h.name}: galleries")
        views.append(
            _head_view(
                h,
                out,
                thumbs,
                top_k,
                finder,
                neighbor_note,
                n_queries,
                n_neighbors,
                own.get(h.name, {}),
                progress,
                clinical,
            )
        )
    test_view = None
    if predictions is not None:
        progress("predicted patients")
        test_view = _test_view(predictions, thumbs, top_k, clinical)
    thumbs.write(progress=show_progress)
    _drop_unreadable(views, thumbs, _test_cells(test_view))
    progress("ROC curves")
    aucs = roc_figure(run.heads, out / "roc.png")
    roc_url = "roc.png" if any(a == a for a in aucs.values()) else None
    progress("triage and calibration")
    triage_url = "triage.png" if triage_figure(run.heads, out / "triage.png") else None
    calibration_url = (
        "calibration.png" if calibration_figure(run.heads, out / "calibration.png") else None
    )
    if thumbs.missing and set(thumbs.missing.values()) == {NO_IMAGE}:
        notes.append("The cells have no images (imported features): galleries show no pictures.")
    elif thumbs.missing:
        first = next(iter(thumbs.missing.values()))
        notes.append(f"{len(thumbs.missing)} cell image(s) could not be read (first: {first}).")

    n_patients = len({p for h in run.heads for p in h.oof["patient_id"]})
    summary_view = render.summary(run.heads, run.pairs, *_cohort_items(run, patients, test_view))
    data = {
        "run": str(run.folder),
        "encoder_id": encoder_id,
        "top_k": top_k,
        "heads": {
            v.head.name: {
                "metrics": {
                    m.key: {"value": m.value, "lo": m.lo, "hi": m.hi, "fold_sd": m.fold_sd}
                    for m in v.head.metrics
                },
                "threshold": v.head.threshold,
                "confusion": v.confusion,
                "roc_auc_mean_probability": aucs.get(v.head.name),
                "patients": render.patient_records(v.patients),
            }
            for v in views
        },
    }
    html = render.page(
        title=f"cellbag report: {run.folder.name}",
        run_folder=str(run.folder),
        n_patients=n_patients,
        encoder_id=encoder_id,
        config_items=list(common.items()),
        encoder_items=encoder_items,
        heads=run.heads,
        roc_url=roc_url,
        head_views=views,
        top_k=top_k,
        notes=notes,
        data=data,
        summary_view=summary_view,
        pairs=run.pairs,
        triage_url=triage_url,
        calibration_url=calibration_url,
        test_view=test_view,
        runs_link=_runs_link(run.folder, out),
    )
    index = out / "index.html"
    write_text(index, html)
    return index


def is_report_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a report cellbag wrote (its ``index.html`` says so)."""
    return file_head_contains(folder / "index.html", "<title>cellbag report:")


def _test_view(
    predictions: str | Path,
    thumbs: Thumbnails,
    top_k: int,
    clinical: dict[str, dict[str, Any]],
) -> render.TestView:
    """The patients of a ``cellbag predict`` output, with the fitted model's galleries."""
    proba, cells = explain.read_predictions(predictions)
    kind = None
    galleries: dict[str, tuple[list, list]] = {}
    if cells is not None and len(cells):
        kind = str(cells["kind"].iloc[0])
        cells = cells.assign(n_cells=cells.groupby("patient_id")["cell_id"].transform("size"))
        for pid, g in cells.groupby("patient_id", sort=False):
            s = g.sort_values(["weight", "cell_id"], ascending=[False, True], kind="stable")
            top = s.head(top_k)
            bottom = s.iloc[len(top) :].iloc[::-1].head(top_k)
            galleries[str(pid)] = (
                [_weight_view(thumbs, c, kind) for c in top.itertuples()],
                [_weight_view(thumbs, c, kind) for c in bottom.itertuples()],
            )
    rows = [
        render.TestRow(
            str(r.Id),
            float(r.Probability),
            int(r.Predicted),
            *galleries.get(str(r.Id), ([], [])),
            clinical.get(str(r.Id)),
        )
        for r in proba.itertuples()
    ]
    return render.TestView(str(predictions), kind, rows)


def _test_cells(view: render.TestView | None) -> list[render.CellView]:
    return [] if view is None else [c for r in view.rows for c in r.top + r.bottom]


def _runs_link(run_folder: Path, out: Path) -> str | None:
    """Relative link to the runs leaderboard written beside the run (``cellbag runs``)."""
    for cand in (run_folder / "leaderboard.html", run_folder.parent / "leaderboard.html"):
        if cand.is_file():
            return os.path.relpath(cand, out)
    return None


def _log_odds(row: Any) -> dict[str, float] | None:
    """A fused head's log-odds terms of one patient (``patient_table`` row), or None
    (images only, the clinical baseline, or folds computed before the terms were kept)."""
    terms = {t: getattr(row, f"log_odds_{t}", None) for t in ("base", "image", "clinical")}
    if any(v is None or pd.isna(v) for v in terms.values()):
        return None
    return {t: float(v) for t, v in terms.items()}


def _triage_calls(oof: pd.DataFrame) -> dict[str, str]:
    """Each patient's call at its folds' triage thresholds: ``cytometry`` when at or above
    it in at least half of the repeats, else ``spared``; empty without triage thresholds."""
    if "triage_threshold" not in oof:
        return {}
    above = (oof["probability"] >= oof["triage_threshold"]).groupby(oof["patient_id"]).mean()
    return {str(p): "cytometry" if r >= 0.5 else "spared" for p, r in above.items()}


def _clinical_values(patients: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """Each patient's clinical values as a clinician reads them: age (years at the reference
    date), gender, lymphocyte count (10⁹/L); empty without the store."""
    if patients is None or not has_clinical_values(patients):
        return {}
    raw = raw_clinical(patients)
    out = {}
    for r, age in zip(patients.itertuples(index=False), raw["age"], strict=True):
        gender = getattr(r, "gender", None)
        count = getattr(r, "lymph_count", None)
        out[str(r.patient_id)] = {
            "age": None if pd.isna(age) else float(age),
            "gender": None if gender is None or pd.isna(gender) else str(gender),
            "lymph_count": None if count is None or pd.isna(count) else float(count),
        }
    return out


def _cohort_items(
    run: Run, patients: pd.DataFrame | None, test_view: render.TestView | None
) -> tuple[list[tuple[str, str]], int, int]:
    """The summary's cohort lines, and the labelled patients per class."""
    table = run.heads[0].patient_table() if run.heads else pd.DataFrame(columns=["label"])
    n_t, n_r = int((table["label"] == 1).sum()), int((table["label"] == 0).sum())
    items = [("labelled patients (out-of-fold)", f"{n_t + n_r}: {n_t} tumoral, {n_r} reactive")]
    if patients is not None:
        scored = patients["patient_id"].astype(str).isin(set(table["patient_id"].astype(str)))
        items.append(("cells of these patients", f"{int(patients.loc[scored, 'n_cells'].sum()):,}"))
        items.append(("other patients in the store (test, unlabelled)", str(int((~scored).sum()))))
    if test_view is not None:
        items.append(("predicted patients", str(len(test_view.rows))))
    return items, n_t, n_r
