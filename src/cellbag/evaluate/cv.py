"""Honest cross-validation of heads over cached bags.

Patient-level, stratified, repeated k-fold over the training split only; splits written
once to ``RUN_DIR/splits.json`` and reused; every fitted transform (clinical scaler, input
standardisation/PCA, k-means) is fitted inside the training fold. Per head,
``RUN_DIR/<head>/`` gets ``metrics.json``, ``oof_predictions.csv``, ``attention.csv``
(attention heads), ``roc.png`` and ``config.json``; finished folds are kept in
``RUN_DIR/<head>/folds/`` so an interrupted run resumes where it stopped. The layout and
the names of every figure: :mod:`cellbag.evaluate.run_folder`.

Thresholds are nested: inside each outer training fold an inner ``inner_folds``-fold cv
gives out-of-fold predictions of the training patients only, from which Youden's cut and
the triage cut (target sensitivity) are chosen, and a ``--calibrate`` map is fitted; both
are then applied to the outer test fold. With 3 inner folds a run fits 4 heads per outer
fold instead of 1 (``--inner-folds 0`` skips them, and the Youden/triage figures); a head
whose own training already predicts each training patient from inner models that did not
see it (``train_oof_proba_``) gives those predictions instead, without refitting.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.aggregate.bags import BagSet, load_bags, open_store
from cellbag.aggregate.base import Bags, Head, standardizer
from cellbag.aggregate.errors import AggregateError
from cellbag.aggregate.registry import make_head, parse_heads
from cellbag.core.threads import default_threads, torch_threads
from cellbag.evaluate.run_folder import versions, write_csv, write_json, write_summary
from cellbag.evaluate.splits import check_splits, inner_splits, load_or_make_splits
from cellbag.evaluate.stats import (
    CALIBRATIONS,
    RESAMPLES,
    TRIAGE_SENSITIVITY,
    apply_calibrator,
    fit_calibrator,
    select_thresholds,
)

#: inner folds of the nested threshold / calibration choice (cost: 1 + this many fits per fold)
INNER_FOLDS = 3


# ------------------------------------------------------------------------------ one fold
@dataclass
class FoldResult:
    head: Head
    proba: np.ndarray
    weights: list[np.ndarray] | None
    clinical_state: dict | None
    seconds: float


def clinical_fold(
    data: BagSet, train: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Clinical features of train and test rows, scaled with statistics of the train rows."""
    if data.patients is not None:
        from cellbag.data import ClinicalScaler

        scaler = ClinicalScaler().fit(data.patients.iloc[train])
        return (
            scaler.transform(data.patients.iloc[train]),
            scaler.transform(data.patients.iloc[test]),
            scaler.to_dict(),
        )
    if data.clinical_matrix is not None:
        m = data.clinical_matrix
        mean, std = standardizer(m[train])
        state = {"mean": mean.tolist(), "std": std.tolist()}
        return (m[train] - mean) / std, (m[test] - mean) / std, state
    raise AggregateError(f"{data.source}: no clinical data; use --no-clinical")


def fold_bags(data: BagSet, train: np.ndarray, test: np.ndarray, clinical: bool):
    """(train X, test X, clinical scaler state): ``Bags`` of the two row sets, with their
    clinical features scaled by statistics of the train rows when ``clinical``."""
    c_tr = c_te = state = None
    if clinical:
        c_tr, c_te, state = clinical_fold(data, train, test)
    x_tr = Bags([data.bags[i] for i in train], c_tr)
    x_te = Bags([data.bags[i] for i in test], c_te)
    return x_tr, x_te, state


def fit_fold(
    data: BagSet,
    head_name: str,
    train: np.ndarray,
    test: np.ndarray,
    clinical: bool = True,
    seed: int = 0,
    params: dict | None = None,
) -> FoldResult:
    """Fit a head on the ``train`` rows and predict the ``test`` rows (all fitting inside)."""
    if data.labels is None:
        raise AggregateError(f"{data.source}: these bags carry no labels (not the training split)")
    t0 = time.perf_counter()
    x_tr, x_te, state = fold_bags(data, train, test, clinical)
    head = make_head(head_name, clinical=clinical, seed=seed, **(params or {}))
    head.fit(x_tr, data.labels[train])
    proba = head.predict_proba(x_te)[:, 1]
    weights = _cell_scores(head, x_te)
    return FoldResult(head, proba, weights, state, time.perf_counter() - t0)


def _cell_scores(head: Head, x: Bags) -> list[np.ndarray] | None:
    """Attention weights, or the head's per-cell contributions (the report's galleries)."""
    try:
        return head.cell_contributions(x)
    except (AggregateError, AttributeError, NotImplementedError):
        return None


# ------------------------------------------------------------------------------ the run
def _data_digest(data: BagSet) -> str:
    if data.digest:
        return data.digest
    h = hashlib.sha256()
    for b in data.bags:
        h.update(np.ascontiguousarray(b).tobytes())
    if data.clinical_matrix is not None:
        h.update(np.ascontiguousarray(data.clinical_matrix).tobytes())
    return h.hexdigest()[:16]


def _inner_predictions(
    data: BagSet,
    name: str,
    train: np.ndarray,
    clinical: bool,
    seed: int,
    params: dict,
    inner_folds: int,
) -> dict:
    """Out-of-fold predictions of the outer training patients from an inner cv on them
    alone (the outer test patients are never seen): ``{patients, probability}``."""
    proba = np.full(len(train), np.nan)
    for k, (itr, ite) in enumerate(inner_splits(data.labels[train], inner_folds, seed)):
        res = fit_fold(data, name, train[itr], train[ite], clinical, seed + 100 * (k + 1), params)
        proba[ite] = res.proba
    return {"patients": [data.patient_ids[i] for i in train], "probability": proba.tolist()}


def _check_options(inner_folds: int, triage_sensitivity: float, calibrate: str | None) -> None:
    if inner_folds == 1 or inner_folds < 0:
        raise AggregateError(f"--inner-folds must be 0 (off) or >= 2, got {inner_folds}")
    if not 0.0 < triage_sensitivity <= 1.0:
        raise AggregateError(f"--triage-sensitivity must be in (0, 1], got {triage_sensitivity}")
    if calibrate is not None and calibrate not in CALIBRATIONS:
        raise AggregateError(
            f"--calibrate must be one of {', '.join(CALIBRATIONS)}, not {calibrate!r}"
        )
    if calibrate is not None and inner_folds == 0:
        raise AggregateError(
            "--calibrate needs inner folds (it is fitted inside the training fold)"
        )


def cross_validate(
    data: BagSet,
    heads: str | Sequence[str],
    out: str | Path,
    clinical: bool = True,
    folds: int = 5,
    repeats: int = 3,
    seed: int = 0,
    head_params: dict[str, dict] | None = None,
    threads: int | None = None,
    console: Any = None,
    quiet: bool = False,
    extra_config: dict | None = None,
    inner_folds: int = INNER_FOLDS,
    triage_sensitivity: float = TRIAGE_SENSITIVITY,
    calibrate: str | None = None,
    resamples: int = RESAMPLES,
    cell_truth: str | Path | None = None,
) -> pd.DataFrame:
    """Cross-validate heads on in-memory bags (the training split); see :func:`run_cv`."""
    from rich.console import Console

    from cellbag.core.progress import progress_bar

    names = parse_heads(heads)
    _check_options(inner_folds, triage_sensitivity, calibrate)
    head_params = head_params or {}
    truth = None
    if cell_truth is not None:
        from cellbag.evaluate.celltruth import read_cell_truth

        truth = read_cell_truth(cell_truth)  # a bad file stops before any work
    if data.labels is None:
        raise AggregateError(f"{data.source}: cross-validation needs the labelled training split")
    if clinical and not data.has_clinical:
        clinical = False
        note = "no clinical data in this store: running image-only (--no-clinical)"
    else:
        note = None
    if clinical and "clinical" not in names:
        names.append("clinical")  # the clinical-only baseline, beside every fused head
    if not clinical and "clinical" in names:
        raise AggregateError("head 'clinical' needs clinical data; drop it or --no-clinical")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = console or Console(quiet=quiet)
    if note:
        console.print(f"[yellow]note:[/] {note}")
    if data.skipped:
        console.print(
            f"[yellow]note:[/] skipped patients without usable cells: {', '.join(data.skipped)}"
        )
    splits = load_or_make_splits(
        out / "splits.json", data.patient_ids, data.labels, folds, repeats, seed
    )
    check_splits(splits)
    index = {p: i for i, p in enumerate(data.patient_ids)}
    digest = _data_digest(data)
    threads = threads or default_threads()

    results: dict[str, dict] = {}
    with (
        torch_threads(threads),
        progress_bar("folds", enabled=not quiet, console=console) as progress,
    ):
        for name in names:
            params = dict(head_params.get(name, {}))
            proto = make_head(name, clinical=clinical, seed=seed, **params)
            key = {
                "head": name,
                "params": proto.settings(),
                "clinical": clinical,
                "encoder_id": data.encoder_id,
                "embeddings_digest": digest,
                "splits": (out / "splits.json").name,
                "folds": folds,
                "repeats": repeats,
                "inner_folds": inner_folds,
                "seed": seed,
            }
            head_dir = out / name
            fold_dir = head_dir / "folds"
            old = head_dir / "config.json"
            if old.is_file():
                try:
                    same = json.loads(old.read_text()).get("key") == json.loads(json.dumps(key))
                except ValueError:
                    same = False
                if not same and fold_dir.exists():
                    console.print(
                        f"[yellow]note:[/] {head_dir}: settings changed, recomputing its folds"
                    )
                    shutil.rmtree(fold_dir)
            fold_dir.mkdir(parents=True, exist_ok=True)
            write_json(head_dir / "config.json", {"key": key, "state": "running"})
            task = progress.add_task(f"cv {name}", total=len(splits))
            t_head = time.perf_counter()
            records = []
            for s in splits:
                r, f = s["repeat"], s["fold"]
                path = fold_dir / f"r{r}_f{f}.json"
                if path.is_file():
                    rec = json.loads(path.read_text())
                else:
                    tr = np.asarray([index[p] for p in s["train"]])
                    te = np.asarray([index[p] for p in s["test"]])
                    fold_seed = seed + 1000 * r + f
                    res = fit_fold(data, name, tr, te, clinical, fold_seed, params)
                    rec = {
                        "repeat": r,
                        "fold": f,
                        "patients": s["test"],
                        "probability": res.proba.tolist(),
                        "cell_weights": None
                        if res.weights is None
                        else [w.tolist() for w in res.weights],
                        "cell_kind": getattr(res.head, "contribution_kind", "attention"),
                        "seconds": res.seconds,
                        "best_epoch": getattr(res.head, "best_epoch_", None),
                    }
                    own = getattr(res.head, "train_oof_proba_", None)
                    if inner_folds and own is not None:
                        # the head's training already held each training patient out once
                        # (its inner k-fold models): those predictions, without refitting
                        rec["inner"] = {
                            "patients": [data.patient_ids[i] for i in tr],
                            "probability": own.tolist(),
                        }
                    elif inner_folds:
                        rec["inner"] = _inner_predictions(
                            data, name, tr, clinical, fold_seed, params, inner_folds
                        )
                    write_json(path, rec)
                records.append(rec)
                progress.advance(task)
            seconds = time.perf_counter() - t_head
            progress.remove_task(task)
            extra = dict(extra_config or {}, triage_sensitivity=triage_sensitivity)
            extra["calibrate"] = calibrate
            oof = write_head_outputs(
                data, head_dir, name, records, key, seconds, extra, triage_sensitivity, calibrate
            )
            info = {
                "clinical": clinical,
                "folds": folds,
                "repeats": repeats,
                "inner_folds": inner_folds,
                "seed": seed,
                "triage_sensitivity": triage_sensitivity if inner_folds else None,
                "calibrate": calibrate,
                "threshold_method": "nested: chosen in each training fold from out-of-fold "
                "predictions of its training patients only (inner folds)",
            }
            if truth is not None:
                from cellbag.evaluate.celltruth import head_instance_auc

                labels = dict(zip(data.patient_ids, data.labels.tolist(), strict=True))
                res_truth = head_instance_auc(head_dir, truth, labels)
                if res_truth is not None:
                    info["cell_truth"] = res_truth  # -> metrics.json
            results[name] = {"oof": oof, "info": info, "seconds": seconds}
    _add_earlier_heads(out, results, data)
    table = write_summary(out, results, seed, resamples)
    if not quiet:
        from cellbag.evaluate.display import comparison_table, paired_lines

        console.print(comparison_table(table, title=f"cross-validation · {out}"))
        for line in paired_lines(out):
            console.print(line)
    return table


def _add_earlier_heads(out: Path, results: dict[str, dict], data: BagSet) -> None:
    """Heads an earlier run left in ``out`` (same splits, same patients) join the summary,
    so comparison.csv and each head's ``vs_best`` cover every head of the folder."""
    from cellbag.evaluate.run_folder import RunFolderError, read_json, read_oof

    patients = set(data.patient_ids)
    for d in sorted(p for p in out.iterdir() if p.is_dir() and p.name not in results):
        try:
            cfg = read_json(d / "config.json")
            oof = read_oof(d / "oof_predictions.csv")
        except (RunFolderError, FileNotFoundError):
            continue
        key = cfg.get("key") or {}
        if cfg.get("state") != "done" or set(oof["patient_id"]) != patients:
            continue
        info = {k: key.get(k) for k in ("clinical", "folds", "repeats", "inner_folds", "seed")}
        info["triage_sensitivity"] = cfg.get("triage_sensitivity")
        info["calibrate"] = cfg.get("calibrate")
        try:  # the instance AUC an earlier `--cell-truth` run measured stays in metrics.json
            truth = read_json(d / "metrics.json").get("cell_truth")
        except (RunFolderError, FileNotFoundError):
            truth = None
        if truth is not None:
            info["cell_truth"] = truth
        results[d.name] = {"oof": oof, "info": info, "seconds": cfg.get("seconds", 0.0)}


def fold_thresholds(
    data: BagSet, rec: dict, triage_sensitivity: float, calibrate: str | None
) -> tuple[dict | None, dict[str, float]]:
    """The calibrator and the ``{youden, triage}`` cuts of one outer fold, from its inner
    out-of-fold predictions only (none without them)."""
    inner = rec.get("inner")
    if not inner:
        return None, {}
    index = {p: i for i, p in enumerate(data.patient_ids)}
    ids = inner["patients"]
    y = data.labels[np.asarray([index[p] for p in ids])]
    p = np.asarray(inner["probability"], dtype=np.float64)
    cal = fit_calibrator(calibrate, y, p) if calibrate else None
    return cal, select_thresholds(ids, y, apply_calibrator(cal, p), triage_sensitivity)


def write_head_outputs(
    data: BagSet,
    head_dir: Path,
    name: str,
    records: list[dict],
    key: dict,
    seconds: float,
    extra_config: dict | None = None,
    triage_sensitivity: float = TRIAGE_SENSITIVITY,
    calibrate: str | None = None,
) -> pd.DataFrame:
    """oof_predictions.csv (with each fold's nested thresholds), attention.csv, roc.png and
    config.json of one head; returns the out-of-fold table (metrics.json comes from
    :func:`cellbag.evaluate.run_folder.write_summary`, which compares the heads)."""
    from cellbag.evaluate.display import roc_plot

    index = {p: i for i, p in enumerate(data.patient_ids)}
    oof_rows, att = [], []
    kind = "attention"
    for rec in records:
        idx = np.asarray([index[p] for p in rec["patients"]])
        y = data.labels[idx]
        raw = np.asarray(rec["probability"], dtype=np.float64)
        cal, thr = fold_thresholds(data, rec, triage_sensitivity, calibrate)
        p = apply_calibrator(cal, raw)
        for pid, prob, praw, lab in zip(rec["patients"], p, raw, y, strict=True):
            row = {
                "patient_id": pid,
                "repeat": rec["repeat"],
                "fold": rec["fold"],
                "probability": float(prob),
                "label": int(lab),
            }
            if thr:
                row["youden_threshold"] = thr["youden"]
                row["triage_threshold"] = thr["triage"]
            if cal is not None:
                row["probability_raw"] = float(praw)
            oof_rows.append(row)
        if rec.get("cell_weights") is not None:
            kind = rec.get("cell_kind", "attention")
            for pid, i, w in zip(rec["patients"], idx, rec["cell_weights"], strict=True):
                ids = (
                    data.cell_ids[i] if data.cell_ids is not None else np.arange(len(w)).astype(str)
                )
                paths = data.cell_paths[i] if data.cell_paths is not None else np.full(len(w), "")
                att.append(
                    pd.DataFrame(
                        {
                            "patient_id": pid,
                            "cell_id": ids,
                            "path": paths,
                            "repeat": rec["repeat"],
                            "fold": rec["fold"],
                            "weight": np.asarray(w, dtype=np.float64),
                        }
                    )
                )
    oof = pd.DataFrame(oof_rows)
    oof = oof.sort_values(["repeat", "fold", "patient_id"], kind="stable").reset_index(drop=True)
    write_csv(head_dir / "oof_predictions.csv", oof)
    if att and kind == "attention":
        write_csv(head_dir / "attention.csv", pd.concat(att, ignore_index=True))
    elif att:  # signed or gain contributions: not attention (distill must not read them)
        write_csv(
            head_dir / "contributions.csv", pd.concat(att, ignore_index=True).assign(kind=kind)
        )
    roc_plot(
        oof, head_dir / "roc.png", title=f"{name} ({'with' if key['clinical'] else 'no'} clinical)"
    )
    config = {
        "key": key,
        "state": "done",
        "source": data.source,
        "n_patients": len(data.patient_ids),
        "skipped_patients": data.skipped,
        "seconds": seconds,
        "versions": versions(),
        **(extra_config or {}),
    }
    write_json(head_dir / "config.json", config)
    return oof


def run_cv(
    store: Any,
    encoder_id: str | None = None,
    heads: str | Sequence[str] = ("meanpool", "abmil", "transformer", "lgbm"),
    out: str | Path = "runs/cv",
    clinical: bool = True,
    folds: int = 5,
    repeats: int = 3,
    seed: int = 0,
    head_params: dict[str, dict] | None = None,
    threads: int | None = None,
    console: Any = None,
    quiet: bool = False,
    inner_folds: int = INNER_FOLDS,
    triage_sensitivity: float = TRIAGE_SENSITIVITY,
    calibrate: str | None = None,
    holdout_finetuned: bool = False,
    cell_truth: str | Path | None = None,
) -> pd.DataFrame:
    """Cross-validate heads on a store's training split; returns the comparison table (one
    row per head: each figure with its 95% bootstrap interval and fold sd, the paired
    difference to the best head, seconds) and prints it (rich) unless ``quiet``.
    ``store`` is a path/URL or an open ``Store``; ``encoder_id`` may be omitted when the
    store holds one encoder. An encoder fine-tuned on some of these patients' labels is
    refused (``holdout_finetuned`` leaves those patients out instead)."""
    from cellbag.evaluate.leaks import guard

    _check_options(inner_folds, triage_sensitivity, calibrate)  # before any reading
    st = open_store(store)
    data = load_bags(st, encoder_id, split="train")
    info = {}
    try:
        info = st.encoder_info(data.encoder_id)
    except Exception:  # pragma: no cover - informative only
        pass
    data = guard(data, info, holdout_finetuned, "cellbag cv")
    extra = {"store": str(st.path), "encoder_info": json.loads(json.dumps(info, default=str))}
    return cross_validate(
        data,
        heads,
        out,
        clinical=clinical,
        folds=folds,
        repeats=repeats,
        seed=seed,
        head_params=head_params,
        threads=threads,
        console=console,
        quiet=quiet,
        extra_config=extra,
        inner_folds=inner_folds,
        triage_sensitivity=triage_sensitivity,
        calibrate=calibrate,
        cell_truth=cell_truth,
    )
