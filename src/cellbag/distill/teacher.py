"""The teacher: what a stage-2 cross-validation run knows, read from its folder and the store.

A teacher is never run. From the run folder (``cellbag cv --out RUN_DIR``, layout of
issue 4) come its soft out-of-fold probabilities per training patient (averaged over
repeats, so targets are not over-confident) and, for attention heads, its out-of-fold
per-cell weights (averaged over repeats and aligned with the store's cell order of each
patient). From the store come the teacher encoder's cached cell embeddings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.distill.errors import DistillError

OOF_FILE = "oof_predictions.csv"
ATTENTION_FILES = ("attention.csv", "attention.parquet")
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.json"
_OOF_COLUMNS = ("patient_id", "repeat", "probability")
_ATT_COLUMNS = ("patient_id", "cell_id", "repeat", "weight")


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
            "metrics": self.metrics,
        }


# ----------------------------------------------------------------------------- locating


def _is_head_folder(folder: Path) -> bool:
    return (folder / OOF_FILE).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DistillError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(doc, dict):
        raise DistillError(f"{path}: expected a JSON object")
    return doc


def _metric_mean(metrics: dict[str, Any], key: str = "balanced_accuracy") -> float:
    body = metrics
    for nest in ("summary", "metrics"):
        if isinstance(metrics.get(nest), dict):
            body = metrics[nest]
            break
    v = body.get(key)
    if isinstance(v, dict):
        v = v.get("mean")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float("nan")


def resolve_head_folder(path: str | Path) -> Path:
    """``RUN_DIR/<head>`` as given, or the best image head of ``RUN_DIR`` (highest mean
    balanced accuracy in its ``metrics.json``; ties by name)."""
    path = Path(path)
    if not path.is_dir():
        raise DistillError(f"{path}: teacher run folder not found")
    if _is_head_folder(path):
        return path
    # the clinical-only baseline reads no images, so it cannot teach an image model
    heads = sorted(
        p for p in path.iterdir() if p.is_dir() and _is_head_folder(p) and p.name != "clinical"
    )
    if not heads:
        raise DistillError(
            f"{path}: not a cv run folder (no <head>/{OOF_FILE}; run `cellbag cv ... --out {path}`)"
        )

    def score(p: Path) -> float:
        m = _read_json(p / METRICS_FILE) if (p / METRICS_FILE).is_file() else {}
        s = _metric_mean(m)
        return -np.inf if np.isnan(s) else s

    return max(heads, key=lambda p: (score(p), -heads.index(p)))


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
        df = pd.read_csv(path, dtype={"patient_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DistillError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from None
    missing = [c for c in _OOF_COLUMNS if c not in df.columns]
    if missing:
        raise DistillError(f"{path}: missing column(s) {', '.join(missing)}")
    p = pd.to_numeric(df["probability"], errors="coerce")
    bad = p.isna() | (p < 0) | (p > 1)
    if bad.any():
        raise DistillError(
            f"{path}: patient {df.loc[bad, 'patient_id'].iloc[0]}: probability is not in [0, 1]"
        )
    df["probability"] = p.astype(np.float64)
    df["patient_id"] = df["patient_id"].astype(str)
    return df


def soft_probabilities(oof: pd.DataFrame) -> dict[str, float]:
    """Mean out-of-fold probability per patient over repeats."""
    return {
        str(k): float(v)
        for k, v in oof.groupby("patient_id", sort=False)["probability"].mean().items()
    }


def read_attention(folder: Path) -> pd.DataFrame | None:
    """The per-cell out-of-fold attention of a head folder, or None for heads without it."""
    csv, pq = (folder / f for f in ATTENTION_FILES)
    if csv.is_file():
        try:
            df = pd.read_csv(csv, dtype={"patient_id": str, "cell_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DistillError(f"{csv}: cannot parse ({str(e).splitlines()[0]})") from None
        where = csv
    elif pq.is_file():
        try:
            df = pd.read_parquet(pq)
        except ImportError:
            raise DistillError(f"{pq}: reading Parquet needs pyarrow") from None
        where = pq
    else:
        return None
    missing = [c for c in _ATT_COLUMNS if c not in df.columns]
    if missing:
        raise DistillError(f"{where}: missing column(s) {', '.join(missing)}")
    w = pd.to_numeric(df["weight"], errors="coerce")
    if w.isna().any() or (w < 0).any():
        raise DistillError(
            f"{where}: cell {df.loc[w.isna() | (w < 0), 'cell_id'].iloc[0]}: weight is not a number >= 0"
        )
    df["weight"] = w.astype(np.float64)
    df["patient_id"] = df["patient_id"].astype(str)
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

    from cellbag.aggregate import AggregateError, load_model

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
