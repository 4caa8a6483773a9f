"""Fitting: one outer fold of one head (and its inner folds), as a self-contained task.

A :class:`FoldTask` names everything a fit depends on (head, parameters, rows, seed), so it
runs the same in this process, in a loky worker or on a Dask worker, and its seed is the
fold's, never the process's: the numbers do not depend on where or in which order the
tasks run. :func:`run_fold` turns a task into the fold's JSON record (what the fold cache
keeps and the outputs read).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cellbag.aggregate.bags import BagSet
from cellbag.aggregate.base import Bags, Head, shared_fits, standardizer
from cellbag.aggregate.errors import AggregateError
from cellbag.aggregate.registry import make_head
from cellbag.evaluate.splits import inner_splits


@dataclass
class FoldResult:
    head: Head
    proba: np.ndarray
    weights: list[np.ndarray] | None
    clinical_state: dict | None
    seconds: float
    #: the test bags' fused log-odds as base + image + clinical terms (late fusion only)
    parts: dict[str, np.ndarray] | None = None


#: (the patients table, its raw clinical features and extra columns) of the last cohort
#: seen: every fit of a cv reads the same table, and computing the features (dates to
#: ages) per fit was a third of a fused meanpool cv on the real cohort
_RAW: tuple[Any, Any, list[str]] | None = None


def _raw_clinical(patients: pd.DataFrame) -> tuple[pd.DataFrame, list[str]] | None:
    """:func:`raw_clinical` of the whole table, computed once per table (the rows of a
    fold are its rows: every feature is per patient); None when dates of birth are text,
    whose parsing may depend on the rows parsed together."""
    global _RAW
    from cellbag.data.clinical import extra_clinical_columns, raw_clinical

    if "dob" in patients and not pd.api.types.is_datetime64_any_dtype(patients["dob"]):
        return None
    hit = _RAW
    if hit is not None and hit[0] is patients:
        return hit[1], hit[2]
    table = raw_clinical(patients)
    extra = extra_clinical_columns(patients)
    _RAW = (patients, table, extra)
    return table, extra


def clinical_fold(
    data: BagSet, train: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Clinical features of train and test rows, scaled with statistics of the train rows."""
    if data.patients is not None:
        from cellbag.data import ClinicalScaler

        raw = _raw_clinical(data.patients)
        if raw is None:  # dates as text: parsed with the rows of the fold, as always
            scaler = ClinicalScaler().fit(data.patients.iloc[train])
            return (
                scaler.transform(data.patients.iloc[train]),
                scaler.transform(data.patients.iloc[test]),
                scaler.to_dict(),
            )
        table, extra = raw
        scaler = ClinicalScaler().fit_raw(table.iloc[train], extra)
        return (
            scaler.transform_raw(table.iloc[train]),
            scaler.transform_raw(table.iloc[test]),
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
    weights = cell_scores(head, x_te)
    parts = head.decision_parts(x_te) if clinical else None
    return FoldResult(head, proba, weights, state, time.perf_counter() - t0, parts)


def cell_scores(head: Head, x: Bags) -> list[np.ndarray] | None:
    """Attention weights, or the head's per-cell contributions (the report's galleries)."""
    try:
        return head.cell_contributions(x)
    except (AggregateError, AttributeError, NotImplementedError):
        return None


@dataclass(frozen=True)
class FoldTask:
    """One outer fold of one head: what it fits on, what it predicts, with which seed."""

    head: str
    repeat: int
    fold: int
    train: np.ndarray  # row positions in the BagSet
    test: np.ndarray
    seed: int  # the fold's seed: seed + 1000 * repeat + fold
    clinical: bool
    inner_folds: int
    params: dict = field(default_factory=dict)


def inner_predictions(
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


def run_fold(data: BagSet, task: FoldTask) -> dict:
    """The fold's record: test patients' probabilities, per-cell scores, and (nested
    thresholds) the inner out-of-fold predictions of its training patients."""
    tr, te = task.train, task.test
    res = fit_fold(data, task.head, tr, te, task.clinical, task.seed, task.params)
    rec = {
        "repeat": task.repeat,
        "fold": task.fold,
        "patients": [data.patient_ids[i] for i in te],
        "probability": res.proba.tolist(),
        "cell_weights": None if res.weights is None else [w.tolist() for w in res.weights],
        "cell_kind": getattr(res.head, "contribution_kind", "attention"),
        "seconds": res.seconds,
        "best_epoch": getattr(res.head, "best_epoch_", None),
    }
    if res.parts is not None:
        rec["log_odds"] = {k: v.tolist() for k, v in res.parts.items()}
    own = getattr(res.head, "train_oof_proba_", None)
    t0 = time.perf_counter()
    if task.inner_folds and own is not None:
        # the head's training already held each training patient out once (its inner
        # k-fold models): those predictions, without refitting
        rec["inner"] = {"patients": [data.patient_ids[i] for i in tr], "probability": own.tolist()}
    elif task.inner_folds:
        rec["inner"] = inner_predictions(
            data, task.head, tr, task.clinical, task.seed, task.params, task.inner_folds
        )
    rec["inner_seconds"] = time.perf_counter() - t0
    return rec


def run_folds(data: BagSet, tasks: Sequence[FoldTask]) -> list[dict]:
    """The records of several fits of one fold, in one worker, sharing every image model
    two of them would both train (:func:`~cellbag.aggregate.base.shared_fits`): the
    ensemble's members are the stand-alone heads of the same fold and seed. The numbers
    are those of separate :func:`run_fold` calls."""
    with shared_fits():
        return [run_fold(data, t) for t in tasks]


def fold_groups(tasks: Sequence[FoldTask], members: Mapping[str, Sequence[str]]) -> list[list[int]]:
    """Indices of ``tasks`` in groups run together by :func:`run_folds`: a head made of
    other heads (``members[head]``, the ensemble's) with those of its members that fit the
    same fold (repeat, fold and seed) in this grid, members first; every other task alone.
    Groups keep the order of their first task."""
    by_fold: dict[tuple, dict[str, int]] = {}
    for i, t in enumerate(tasks):
        by_fold.setdefault((t.repeat, t.fold, t.seed, t.clinical), {})[t.head] = i
    taken: set[int] = set()
    grouped: dict[int, list[int]] = {}
    for i, t in enumerate(tasks):
        own = [
            j
            for name in members.get(t.head, ())
            if (j := by_fold[(t.repeat, t.fold, t.seed, t.clinical)].get(name)) is not None
            and j not in taken
        ]
        if own:
            taken.update(own + [i])
            grouped[min(own + [i])] = own + [i]
    out = []
    for i in range(len(tasks)):
        if i in grouped:
            out.append(grouped[i])
        elif i not in taken:
            out.append([i])
    return out
