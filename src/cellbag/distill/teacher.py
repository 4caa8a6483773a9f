"""The teacher: what a stage-2 cross-validation run knows, read from its folder and the store.

A teacher is never run for its targets. From the run folder (``cellbag cv --out RUN_DIR``,
read through :mod:`cellbag.evaluate.run_folder`) come its soft out-of-fold probabilities
per training patient (averaged over repeats, so targets are not over-confident) and, for
attention heads, its out-of-fold per-cell weights (averaged over repeats and aligned with
the store's cell order of each patient). From the store come the teacher encoder's cached
cell embeddings.

To compare a student with its teacher like with like, :func:`cv_predictor` scores the
cv run's own predictor (its fold models, refitted bit-identically from the run's splits
and seeds, averaged) on held-out patients, and :func:`compare_heldout` gives both figures
with bootstrap intervals and their paired difference on the same patients.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.distill.errors import DistillError
from cellbag.evaluate import run_folder as rf
from cellbag.evaluate.stats import best_of

OOF_FILE = rf.OOF_FILE
ATTENTION_FILES = rf.ATTENTION_FILES
METRICS_FILE = rf.METRICS_FILE
CONFIG_FILE = rf.CONFIG_FILE
MODEL_FILE = "model.json"
VALIDATION_FILE = "validation.json"


@dataclass
class Teacher:
    """A teacher's soft targets: per-patient probability, optional per-cell attention
    (aligned with ``store.bag_cells(patient)``), and its encoder's id in the store."""

    folder: Path
    head: str
    encoder_id: str
    probabilities: dict[str, float]
    attention: dict[str, np.ndarray] | None
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    kind: str = "cv"  # 'cv' (out-of-fold targets) or 'model' (a fitted model, in-sample)

    @property
    def id(self) -> str:
        """``<run>/<head>@<encoder_id>#<digest>`` (cv) or ``<model dir>@...`` (fitted model)."""
        name = f"{self.folder.parent.name}/{self.head}" if self.kind == "cv" else self.folder.name
        return f"{name}@{self.encoder_id}#{self.digest}"

    def summary(self) -> dict[str, Any]:
        """What the student's ``config.json`` records about its teacher."""
        return {
            "id": self.id,
            "folder": str(self.folder),
            "kind": self.kind,
            "head": self.head,
            "encoder_id": self.encoder_id,
            "has_attention": self.attention is not None,
            "n_patients": len(self.probabilities),
            # the run's figures (with intervals), without its per-fold detail
            "metrics": self.metrics.get("metrics", self.metrics),
        }


# ----------------------------------------------------------------------------- locating


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return rf.read_json(path)
    except rf.RunFolderError as e:
        raise DistillError(str(e)) from None


def resolve_head_folder(path: str | Path) -> Path:
    """``RUN_DIR/<head>`` as given, or the best image head of ``RUN_DIR`` (highest ROC AUC
    in its ``metrics.json``, the run's own ``best``; ties by name)."""
    path = Path(path)
    if not path.is_dir():
        raise DistillError(f"{path}: teacher run folder not found")
    if (path / OOF_FILE).is_file():
        return path
    try:
        best = rf.best_head(path)
        if best.name == "clinical":  # the clinical-only baseline reads no images
            folders = [p for p in rf.head_folders(path) if p.name != "clinical"]
            if not folders:
                raise DistillError(f"{path}: only the clinical baseline here; it reads no images")
            by_name = {p.name: p for p in folders}  # the best image head, by the one rule
            best = by_name[best_of({name: rf.figure(p) for name, p in by_name.items()})]
        return best
    except rf.RunFolderError as e:
        raise DistillError(str(e)) from None


def _encoder_id(config: dict[str, Any], store: Any, folder: Path) -> str:
    places = [config, config.get("key") if isinstance(config.get("key"), dict) else {}]
    for where, key in [(d, k) for d in places for k in ("encoder_id", "encoder")]:
        v = where.get(key)
        if isinstance(v, dict):
            v = v.get("encoder_id") or v.get("id")
        if isinstance(v, str) and v:
            return v
    have = store.encoders()
    if len(have) == 1:
        return have[0]
    raise DistillError(
        f"{folder / CONFIG_FILE}: does not name the teacher's encoder and the store "
        f"{store.path} holds {len(have)} encoders; pass --teacher-encoder ID"
    )


def _file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------- reading


def read_oof(path: Path) -> pd.DataFrame:
    """The out-of-fold predictions file, checked."""
    try:
        return rf.read_oof(path)
    except rf.RunFolderError as e:
        raise DistillError(str(e)) from None


def soft_probabilities(oof: pd.DataFrame) -> dict[str, float]:
    """Mean out-of-fold probability per patient over repeats."""
    return {str(k): float(v) for k, v in rf.patient_scores(oof).items()}


def read_attention(folder: Path) -> pd.DataFrame | None:
    """The per-cell out-of-fold attention of a head folder, or None for heads without it."""
    try:
        df = rf.read_attention(folder)
    except rf.RunFolderError as e:
        raise DistillError(str(e)) from None
    if df is not None:
        df["cell_id"] = df["cell_id"].astype(str)
    return df


def align_attention(
    attention: pd.DataFrame, store: Any, patient_ids: list[str], where: Path
) -> dict[str, np.ndarray]:
    """Per patient, the mean attention over repeats of each of its cells, in the order of
    ``store.bag_cells(patient)`` (the rows of ``store.bag``), renormalised to sum to 1.

    A store cell without a weight, or a weighted cell the store does not hold, is an error
    naming the patient: the run was made from another store.
    """
    mean = attention.groupby(["patient_id", "cell_id"], sort=False)["weight"].mean()
    by_patient = {str(pid): s.droplevel(0) for pid, s in mean.groupby(level=0, sort=False)}
    out: dict[str, np.ndarray] = {}
    for pid in patient_ids:
        cells = store.bag_cells(pid)["cell_id"].astype(str).to_numpy()
        s = by_patient.get(pid)
        if s is None:
            raise DistillError(f"{where}: patient {pid}: no attention weights for this patient")
        w = s.reindex(cells)
        if w.isna().any():
            raise DistillError(
                f"{where}: patient {pid}: cell {cells[w.isna().to_numpy()][0]} of store "
                f"{store.path} has no attention weight (was the run made from this store?)"
            )
        extra = set(s.index) - set(cells)
        if extra:
            raise DistillError(
                f"{where}: patient {pid}: cell {sorted(extra)[0]} is not an ok cell of store {store.path}"
            )
        a = w.to_numpy(dtype=np.float64)
        total = a.sum()
        out[pid] = (a / total if total > 0 else np.full(len(a), 1.0 / len(a))).astype(np.float32)
    return out


def read_teacher(
    run: str | Path,
    store: Any,
    patient_ids: list[str],
    encoder_id: str | None = None,
    use_attention: bool = True,
) -> Teacher:
    """Read a cv run (``RUN_DIR`` or ``RUN_DIR/<head>``) or a fitted ``MODEL_DIR`` (from
    ``cellbag fit``) as a teacher for ``patient_ids``.

    From a cv run, every one of ``patient_ids`` needs an out-of-fold probability; the
    teacher encoder (from the head's ``config.json``, or ``encoder_id``) must be complete
    in ``store``.
    """
    if (Path(run) / MODEL_FILE).is_file():
        return teacher_from_model(run, store, patient_ids, use_attention)
    folder = resolve_head_folder(run)
    config = _read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
    metrics = _read_json(folder / METRICS_FILE) if (folder / METRICS_FILE).is_file() else {}
    key = config.get("key") if isinstance(config.get("key"), dict) else {}
    head = next((d["head"] for d in (config, key) if isinstance(d.get("head"), str)), folder.name)
    eid = encoder_id or _encoder_id(config, store, folder)
    if eid not in store.encoders():
        raise DistillError(
            f"{folder}: teacher encoder {eid} is not in store {store.path} "
            f"(has: {', '.join(store.encoders()) or 'none'})"
        )
    store.require_complete(eid)
    oof = read_oof(folder / OOF_FILE)
    probs = soft_probabilities(oof)
    missing = [p for p in patient_ids if p not in probs]
    if missing:
        raise DistillError(
            f"{folder / OOF_FILE}: patient {missing[0]} has no out-of-fold prediction "
            f"({len(missing)} training patients missing; was the run made from this cohort?)"
        )
    att_df = read_attention(folder) if use_attention else None
    attention = None
    files = [folder / OOF_FILE]
    if att_df is not None:
        where = next(folder / f for f in ATTENTION_FILES if (folder / f).is_file())
        attention = align_attention(att_df, store, patient_ids, where)
        files.append(where)
    return Teacher(
        folder=folder.resolve(),
        head=str(head),
        encoder_id=eid,
        probabilities={p: probs[p] for p in patient_ids},
        attention=attention,
        metrics=metrics,
        config=config,
        digest=_file_digest(files),
    )


def teacher_from_model(
    folder: str | Path, store: Any, patient_ids: list[str], use_attention: bool = True
) -> Teacher:
    """A fitted stage-2 model (``cellbag fit`` MODEL_DIR) as a teacher: its head (not its
    encoder) is applied to the cached bags of ``patient_ids``. Its probabilities on its own
    training patients are in-sample, so more confident than a cv run's out-of-fold ones."""
    import warnings

    from cellbag.aggregate import AggregateError
    from cellbag.evaluate import load_model

    folder = Path(folder)
    try:
        model = load_model(folder)
    except AggregateError as e:
        raise DistillError(str(e)) from None
    eid = model.encoder_id
    if eid not in store.encoders():
        raise DistillError(
            f"{folder}: teacher encoder {eid} is not in store {store.path} "
            f"(has: {', '.join(store.encoders()) or 'none'})"
        )
    store.require_complete(eid)
    warnings.warn(
        f"{folder}: a fitted model gives in-sample soft targets; a cv run folder gives "
        "out-of-fold ones (less over-confident)",
        stacklevel=2,
    )
    bags = store.bags(eid, patient_ids)
    pats = store.patients().set_index("patient_id").loc[patient_ids].reset_index()
    patients = pats if model.clinical else None
    probs = model.predict_proba(bags, patients)
    attention = None
    if use_attention and model.has_cell_weights:
        ws = model.cell_weights(bags, patients)
        attention = {
            p: (np.asarray(w, np.float64) / max(float(np.sum(w)), 1e-12)).astype(np.float32)
            for p, w in zip(patient_ids, ws, strict=True)
        }
    return Teacher(
        folder=folder.resolve(),
        head=str(model.head_name),
        encoder_id=eid,
        probabilities={p: float(v) for p, v in zip(patient_ids, probs, strict=True)},
        attention=attention,
        metrics={
            "threshold": model.threshold,
            "n_train_patients": model.doc.get("n_train_patients"),
        },
        config=model.doc,
        digest=_file_digest([folder / MODEL_FILE]),
        kind="model",
    )


# ----------------------------------------------------------------------------- held-out figures
def check_heldout(trained_on: Any, patient_ids: list[str], what: str = "the student") -> None:
    """Refuse, in one line, to score a model on patients it (or its teacher) trained on."""
    seen = {str(p) for p in trained_on}
    hit = [p for p in patient_ids if str(p) in seen]
    if hit:
        raise DistillError(
            f"{len(hit)} of these {len(patient_ids)} patients (e.g. {hit[0]}) trained {what} "
            "or its teacher; score it on held-out patients only (e.g. the test split)"
        )


def cv_predictor(run: str | Path, store: Any, patient_ids: list[str]) -> np.ndarray:
    """The cv run's own predictor on held-out ``patient_ids``: every fold model of the run
    applied to them, the probabilities averaged over folds and repeats (as the run's
    out-of-fold predictions are averaged over repeats). Training patients are refused."""
    return fold_predictions(run, store, patient_ids).mean(axis=0)


def fold_predictions(
    run: str | Path, store: Any, patient_ids: list[str], allow_training: bool = False
) -> np.ndarray:
    """``(n_splits, n_patients)``: each fold model of the run (refitted from its splits.json
    with the run's head, parameters and per-fold seeds, so the same models that made the
    out-of-fold predictions) applied to ``patient_ids``."""
    from cellbag.aggregate import BagSet, load_bags
    from cellbag.core.threads import torch_threads
    from cellbag.evaluate import fit_fold

    folder = resolve_head_folder(run)
    root = folder.parent
    key = _read_json(folder / CONFIG_FILE).get("key") or {}
    splits = _read_json(root / rf.SPLITS).get("splits") if (root / rf.SPLITS).is_file() else None
    if not key or not splits:
        raise DistillError(
            f"{folder}: not a `cellbag cv` head folder (no config key or splits.json)"
        )
    train = load_bags(store, key.get("encoder_id"), split="train")
    if not allow_training:
        check_heldout(train.patient_ids, patient_ids, "the teacher")
    held = load_bags(store, key.get("encoder_id"), split="all")
    pos = {p: i for i, p in enumerate(held.patient_ids)}
    missing = [p for p in patient_ids if p not in pos]
    if missing:
        raise DistillError(f"{store.path}: patient {missing[0]} has no usable cells to score")
    held = held.subset(np.asarray([pos[p] for p in patient_ids]))
    n = len(train)
    both = BagSet(
        patient_ids=train.patient_ids + held.patient_ids,
        bags=train.bags + held.bags,
        patients=None
        if train.patients is None
        else pd.concat([train.patients, held.patients], ignore_index=True),
        labels=np.r_[train.labels, np.zeros(len(held), np.int64)],  # held-out rows: never read
        encoder_id=train.encoder_id,
        source=train.source,
    )
    index = {p: i for i, p in enumerate(train.patient_ids)}
    test = np.arange(n, n + len(held))
    probs = []
    seed = int(key.get("seed", 0))
    # the run's head parameters, less those fit_fold sets itself
    params = {k: v for k, v in (key.get("params") or {}).items() if k not in ("clinical", "seed")}
    with torch_threads(1):
        for s in splits:
            tr = np.asarray([index[p] for p in s["train"]])
            fold_seed = seed + 1000 * s["repeat"] + s["fold"]
            res = fit_fold(
                both, key["head"], tr, test, key.get("clinical", True), fold_seed, params
            )
            probs.append(res.proba)
    return np.asarray(probs)


def compare_heldout(
    y: np.ndarray,
    predictions: dict[str, tuple[np.ndarray, float]],
    patient_ids: list[str],
    seed: int = 0,
) -> dict[str, Any]:
    """Figures of several predictors on the same held-out patients, each with its 95%
    bootstrap interval, and their paired differences. ``predictions[name] = (probability,
    decision threshold)``."""
    from cellbag.evaluate.stats import evaluate

    tables = {
        name: pd.DataFrame(
            {
                "patient_id": patient_ids,
                "repeat": 0,
                "fold": 0,
                "probability": np.asarray(p, np.float64),
                "label": np.asarray(y, int),
                "threshold": float(t),
            }
        )
        for name, (p, t) in predictions.items()
    }
    figures, pairs = evaluate(tables, seed=seed)
    keep = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "brier")
    return {
        "n_patients": len(patient_ids),
        "interval": "95% stratified bootstrap over the held-out patients",
        "figures": {
            name: {
                k: {x: f["metrics"][k][x] for x in ("value", "ci95_low", "ci95_high")} for k in keep
            }
            for name, f in figures.items()
        },
        "pairs": pairs,
    }


def write_validation(student_dir: str | Path, doc: dict[str, Any]) -> Path:
    """Store a student's held-out figures in its model directory (``validation.json``)."""
    path = Path(student_dir) / VALIDATION_FILE
    rf.write_json(path, doc)
    return path
