"""Outputs of a cv run: per head ``oof_predictions.csv`` (with each fold's nested
thresholds), ``attention.csv`` or ``contributions.csv``, ``roc.png``, ``config.json``; then
the comparison of every head of the folder (``metrics.json``, ``comparison.csv``:
:func:`cellbag.evaluate.run_folder.write_summary`). Everything here reads fold records only,
so the outputs are the same whichever process fitted the folds, in whichever order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cellbag.aggregate.bags import BagSet
from cellbag.evaluate.run_folder import versions, write_csv, write_json
from cellbag.evaluate.stats import (
    TRIAGE_SENSITIVITY,
    apply_calibrator,
    fit_calibrator,
    select_thresholds,
)

#: the terms of a fused head's log-odds (late fusion), columns ``log_odds_<term>``
LOG_ODDS_TERMS = ("base", "image", "clinical")


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
        parts = rec.get("log_odds") or {}
        for j, (pid, prob, praw, lab) in enumerate(zip(rec["patients"], p, raw, y, strict=True)):
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
            for term in LOG_ODDS_TERMS:
                if term in parts:  # late fusion: the log-odds as base + image + clinical
                    row[f"log_odds_{term}"] = float(parts[term][j])
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
    clinical = "with" if key["clinical"] else "no"
    roc_plot(
        {name: oof},
        head_dir / "roc.png",
        title=f"{name} ({clinical} clinical)\nROC, mean out-of-fold probability per patient",
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


def add_earlier_heads(out: Path, results: dict[str, dict], data: BagSet) -> None:
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
