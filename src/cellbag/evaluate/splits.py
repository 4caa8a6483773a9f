"""Patient-level, stratified, repeated k-fold splits, written once to ``splits.json``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from cellbag.aggregate.errors import AggregateError
from cellbag.core.io import write_json

SPLITS_VERSION = 1


def make_splits(
    patient_ids: list[str], y: np.ndarray, folds: int = 5, repeats: int = 3, seed: int = 0
) -> list[dict]:
    """``[{repeat, fold, train: [ids], test: [ids]}]``; each repeat partitions the patients."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y).astype(int)
    counts = np.bincount(y, minlength=2)
    if folds < 2:
        raise AggregateError(f"--folds must be >= 2, got {folds}")
    if counts.min() < folds:
        raise AggregateError(
            f"{folds}-fold cv needs >= {folds} training patients per class, "
            f"have {counts[0]} reactive / {counts[1]} tumoral; use fewer --folds"
        )
    ids = np.asarray(patient_ids, dtype=object)
    out = []
    for r in range(repeats):
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + 7919 * r)
        for f, (tr, te) in enumerate(skf.split(np.zeros(len(y)), y)):
            out.append(
                {"repeat": r, "fold": f, "train": ids[tr].tolist(), "test": ids[te].tolist()}
            )
    return out


def _digest(patient_ids: list[str], y: np.ndarray) -> str:
    text = "\n".join(f"{p}\t{int(v)}" for p, v in zip(patient_ids, y, strict=True))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_or_make_splits(
    path: Path, patient_ids: list[str], y: np.ndarray, folds: int, repeats: int, seed: int
) -> list[dict]:
    """Reuse ``path`` when it matches the patients and settings, else write it (once).
    A mismatching file is an error: a run folder holds one set of splits."""
    digest = _digest(patient_ids, y)
    want = {"folds": folds, "repeats": repeats, "seed": seed, "patients_digest": digest}
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            have = {k: doc[k] for k in want}
            splits = doc["splits"]
        except (OSError, ValueError, KeyError) as e:
            raise AggregateError(f"{path}: unreadable splits file ({e}); remove it") from None
        if have != want:
            diff = ", ".join(f"{k} {have[k]} != {want[k]}" for k in want if have[k] != want[k])
            raise AggregateError(
                f"{path}: made for other settings ({diff}); use another --out or delete this run folder"
            )
        return splits
    splits = make_splits(patient_ids, y, folds, repeats, seed)
    check_splits(splits)
    doc = dict(want, version=SPLITS_VERSION, n_patients=len(patient_ids), splits=splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, doc, indent=1)
    return splits


def check_splits(splits: list[dict]) -> None:
    """Assert that within each repeat no patient is in two test folds or in train and test."""
    by_repeat: dict[int, set[str]] = {}
    for s in splits:
        tr, te = set(s["train"]), set(s["test"])
        if tr & te:
            raise AggregateError(f"split r{s['repeat']}f{s['fold']}: patients in train and test")
        seen = by_repeat.setdefault(s["repeat"], set())
        if seen & te:
            raise AggregateError(
                f"split r{s['repeat']}f{s['fold']}: a patient is in two test folds"
            )
        seen |= te


def inner_splits(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified ``folds``-fold splits (positions into ``y``) of one outer training fold,
    for the nested choice of thresholds; deterministic in ``seed``. Fewer folds when a class
    has fewer than ``folds`` patients (at least 2)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y).astype(int)
    counts = np.bincount(y, minlength=2)
    folds = min(folds, int(counts.min()))  # a small cohort: as many as each class allows
    if folds < 2:
        raise AggregateError(
            f"a training fold has {counts[0]} reactive / {counts[1]} tumoral patients: too few "
            "for inner folds (thresholds chosen inside the fold); use fewer --folds or "
            "--inner-folds 0"
        )
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(y)), y))
