"""Honest cross-validation of heads over cached bags.

Patient-level, stratified, repeated k-fold over the training split only; splits written
once to ``RUN_DIR/splits.json`` and reused; every fitted transform (clinical scaler, input
standardisation/PCA, k-means) is fitted inside the training fold. Per head,
``RUN_DIR/<head>/`` gets ``metrics.json``, ``oof_predictions.csv``, ``attention.csv``
(attention heads), ``roc.png`` and ``config.json``; finished folds are kept in
``RUN_DIR/<head>/folds/`` so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.aggregate.bags import BagSet, load_bags, open_store
from cellbag.aggregate.base import Head, standardizer
from cellbag.aggregate.errors import AggregateError
from cellbag.aggregate.metrics import METRICS, binary_metrics, summarize
from cellbag.aggregate.registry import head_class, make_head
from cellbag.aggregate.splits import check_splits, load_or_make_splits
from cellbag.core.io import write_json

THRESHOLD = 0.5


def default_threads() -> int:
    """Torch threads for a run: one, always.

    A fixed number keeps results reproducible (torch's CPU reductions split by thread, so
    another thread count can change the last bits, and early stopping can amplify that).
    One is also the fast choice here: the tensors are small, and on a busy 2-core machine
    two OpenMP threads made a 5-fold abmil cv 15x slower (305 s vs 20 s). ``--threads``
    overrides it (figures are then reproducible at that thread count)."""
    return 1


@contextmanager
def torch_threads(n: int | None):
    """Set torch's intra-op threads for the duration (the neural heads import torch anyway)."""
    import torch

    if n is None:
        yield
        return

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    c_tr = c_te = None
    state = None
    if clinical:
        c_tr, c_te, state = clinical_fold(data, train, test)
    head = make_head(head_name, clinical=clinical, seed=seed, **(params or {}))
    head.fit([data.bags[i] for i in train], c_tr, data.labels[train])
    test_bags = [data.bags[i] for i in test]
    proba = head.predict_proba(test_bags, c_te)
    weights = head.cell_weights(test_bags, c_te) if head.has_cell_weights else None
    return FoldResult(head, proba, weights, state, time.perf_counter() - t0)


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


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("cellbag", "numpy", "scikit-learn", "torch", "lightgbm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _parse_heads(heads: str | Sequence[str]) -> list[str]:
    names = [h.strip() for h in heads.split(",")] if isinstance(heads, str) else list(heads)
    names = [h for h in names if h]
    if not names:
        raise AggregateError("no head given (e.g. --head abmil,lgbm,meanpool)")
    for h in names:
        head_class(h)  # unknown names fail before any work
    if len(set(names)) != len(names):
        raise AggregateError(f"a head is named twice: {','.join(names)}")
    return names


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
) -> pd.DataFrame:
    """Cross-validate heads on in-memory bags (the training split); see :func:`run_cv`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    names = _parse_heads(heads)
    head_params = head_params or {}
    if data.labels is None:
        raise AggregateError(f"{data.source}: cross-validation needs the labelled training split")
    if clinical and not data.has_clinical:
        clinical = False
        note = "no clinical data in this store: running image-only (--no-clinical)"
    else:
        note = None
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

    rows = []
    with (
        torch_threads(threads),
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=quiet,
        ) as progress,
    ):
        for name in names:
            params = dict(head_params.get(name, {}))
            proto = make_head(name, clinical=clinical, seed=seed, **params)
            key = {
                "head": name,
                "params": proto.get_params(),
                "clinical": clinical,
                "encoder_id": data.encoder_id,
                "embeddings_digest": digest,
                "splits": (out / "splits.json").name,
                "folds": folds,
                "repeats": repeats,
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
            write_json(head_dir / "config.json", {"key": key, "state": "running"}, indent=1)
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
                    res = fit_fold(data, name, tr, te, clinical, seed + 1000 * r + f, params)
                    rec = {
                        "repeat": r,
                        "fold": f,
                        "patients": s["test"],
                        "probability": res.proba.tolist(),
                        "cell_weights": None
                        if res.weights is None
                        else [w.tolist() for w in res.weights],
                        "seconds": res.seconds,
                        "best_epoch": getattr(res.head, "best_epoch_", None),
                    }
                    write_json(path, rec, indent=1)
                records.append(rec)
                progress.advance(task)
            seconds = time.perf_counter() - t_head
            progress.remove_task(task)
            summary = write_head_outputs(data, head_dir, name, records, key, seconds, extra_config)
            rows.append(summary)
    table = pd.DataFrame(rows)
    table.to_csv(out / "comparison.csv", index=False)
    if not quiet:
        from cellbag.aggregate.report import comparison_table

        console.print(comparison_table(table, title=f"cross-validation · {out}"))
    return table


def write_head_outputs(
    data: BagSet,
    head_dir: Path,
    name: str,
    records: list[dict],
    key: dict,
    seconds: float,
    extra_config: dict | None = None,
) -> dict:
    """metrics.json, oof_predictions.csv, attention.csv, roc.png and config.json of one head."""
    from cellbag.aggregate.report import roc_plot

    index = {p: i for i, p in enumerate(data.patient_ids)}
    oof_rows, per_fold, att = [], [], []
    for rec in records:
        idx = np.asarray([index[p] for p in rec["patients"]])
        y = data.labels[idx]
        p = np.asarray(rec["probability"], dtype=np.float64)
        m = binary_metrics(y, p, THRESHOLD)
        per_fold.append({"repeat": rec["repeat"], "fold": rec["fold"], "n_test": len(idx), **m})
        for pid, prob, lab in zip(rec["patients"], p, y, strict=True):
            oof_rows.append((pid, rec["repeat"], rec["fold"], float(prob), int(lab)))
        if rec.get("cell_weights") is not None:
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
    oof = pd.DataFrame(oof_rows, columns=["patient_id", "repeat", "fold", "probability", "label"])
    oof = oof.sort_values(["repeat", "fold", "patient_id"], kind="stable").reset_index(drop=True)
    oof.to_csv(head_dir / "oof_predictions.csv", index=False)
    if att:
        pd.concat(att, ignore_index=True).to_csv(head_dir / "attention.csv", index=False)
    pooled = {k: [] for k in METRICS}
    for _, g in oof.groupby("repeat"):
        m = binary_metrics(g["label"].to_numpy(), g["probability"].to_numpy(), THRESHOLD)
        for k in METRICS:
            pooled[k].append(m[k])
    summary = {k: summarize([f[k] for f in per_fold]) for k in METRICS}
    metrics = {
        "head": name,
        "clinical": key["clinical"],
        "threshold": THRESHOLD,
        "n_patients": len(data.patient_ids),
        "folds": key["folds"],
        "repeats": key["repeats"],
        "seed": key["seed"],
        "interval": "ci95 = 2.5th-97.5th percentiles of the per-fold values (folds x repeats)",
        "summary": summary,
        "pooled_oof": {k: summarize(v) for k, v in pooled.items()},
        "per_fold": per_fold,
    }
    write_json(head_dir / "metrics.json", metrics, indent=1)
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
        "versions": _versions(),
        **(extra_config or {}),
    }
    write_json(head_dir / "config.json", config, indent=1)
    row: dict[str, Any] = {
        "head": name,
        "clinical": key["clinical"],
        "n_patients": len(data.patient_ids),
    }
    for k in METRICS:
        for stat in ("mean", "std", "ci95_low", "ci95_high"):
            row[f"{k}_{stat}"] = summary[k][stat]
    row["seconds"] = round(seconds, 3)
    return row


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
) -> pd.DataFrame:
    """Cross-validate heads on a store's training split; returns the comparison table (one
    row per head: mean/std/95% interval of each metric, seconds) and prints it (rich)
    unless ``quiet``. ``store`` is a path/URL or an open ``Store``; ``encoder_id`` may be
    omitted when the store holds one encoder."""
    st = open_store(store)
    data = load_bags(st, encoder_id, split="train")
    info = {}
    try:
        info = st.encoder_info(data.encoder_id)
    except Exception:  # pragma: no cover - informative only
        pass
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
    )
