"""A deployable model: one head (or a fold ensemble) trained on all training patients,
saved to MODEL_DIR with its clinical scaler(s) and an explicit decision threshold.

MODEL_DIR/model.json       head, params, encoder, threshold, members
MODEL_DIR/member<k>/       head.json + head.safetensors (+ lgbm_model.txt), clinical.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.aggregate.bags import BagSet, load_bags, open_store
from cellbag.aggregate.base import Head
from cellbag.aggregate.cv import _versions, default_threads, torch_threads
from cellbag.aggregate.errors import AggregateError
from cellbag.aggregate.metrics import youden_threshold
from cellbag.core.io import atomic_path, write_json

MODEL_FORMAT = "cellbag-model"
MODEL_VERSION = 1


@dataclass
class Member:
    head: Head
    scaler: Any  # ClinicalScaler or None


def _clinical(scaler: Any, patients: pd.DataFrame | None) -> np.ndarray | None:
    if scaler is None:
        return None
    if patients is None:
        raise AggregateError("this model uses clinical features: pass the patients table")
    return scaler.transform(patients)


def _fit_member(
    data: BagSet, idx: np.ndarray, head_name: str, clinical: bool, seed: int, params: dict
):
    from cellbag.aggregate.registry import make_head
    from cellbag.data import ClinicalScaler

    scaler = None
    c = None
    if clinical:
        scaler = ClinicalScaler().fit(data.patients.iloc[idx])
        c = scaler.transform(data.patients.iloc[idx])
    head = make_head(head_name, clinical=clinical, seed=seed, **params)
    head.fit([data.bags[i] for i in idx], c, data.labels[idx])
    return Member(head, scaler)


class FittedModel:
    """A loaded MODEL_DIR: ``predict_proba``/``cell_weights`` on bags + patients table,
    ``predict_store`` on a store's split. What distillation reads as its teacher."""

    def __init__(self, folder: Path, doc: dict, members: list[Member]) -> None:
        self.folder = folder
        self.doc = doc
        self.members = members

    @property
    def head_name(self) -> str:
        return self.doc["head"]

    @property
    def encoder_id(self) -> str:
        return self.doc["encoder_id"]

    @property
    def threshold(self) -> float:
        return float(self.doc["threshold"]["value"])

    @property
    def clinical(self) -> bool:
        return bool(self.doc["clinical"])

    @property
    def has_cell_weights(self) -> bool:
        return self.members[0].head.has_cell_weights

    def predict_proba(
        self, bags: list[np.ndarray], patients: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Mean probability of class 1 over the members."""
        ps = [m.head.predict_proba(bags, _clinical(m.scaler, patients)) for m in self.members]
        return np.mean(ps, axis=0)

    def cell_weights(
        self, bags: list[np.ndarray], patients: pd.DataFrame | None = None
    ) -> list[np.ndarray]:
        """Per-cell attention (mean over members; each bag's weights sum to 1)."""
        ws = [m.head.cell_weights(bags, _clinical(m.scaler, patients)) for m in self.members]
        return [np.mean([w[i] for w in ws], axis=0) for i in range(len(bags))]

    def predict_store(
        self, store: Any, split: str = "test", threshold: float | None = None
    ) -> pd.DataFrame:
        """``patient_id, probability, predicted`` for a store's split; patients without
        usable cells get probability NaN and the majority class of training."""
        data = load_bags(open_store(store), self.encoder_id, split=split)
        t = self.threshold if threshold is None else float(threshold)
        with torch_threads(default_threads()):
            p = self.predict_proba(data.bags, data.patients if self.clinical else None)
        df = pd.DataFrame({"patient_id": data.patient_ids, "probability": p})
        df["predicted"] = (df["probability"] >= t).astype(int)
        if data.skipped:
            fallback = int(self.doc.get("train_prevalence", 0.0) >= 0.5)
            extra = pd.DataFrame(
                {"patient_id": data.skipped, "probability": np.nan, "predicted": fallback}
            )
            df = pd.concat([df, extra], ignore_index=True)
        return df


def load_model(folder: str | Path) -> FittedModel:
    """Read a MODEL_DIR written by :func:`fit_model`."""
    from cellbag.data import ClinicalScaler

    folder = Path(folder)
    path = folder / "model.json"
    if not path.is_file():
        raise AggregateError(
            f"{folder}: not a model folder (no model.json); run `cellbag fit` first"
        )
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != MODEL_FORMAT:
            raise ValueError("not a cellbag model")
        members = []
        for name in doc["members"]:
            head = Head.load(folder / name)
            cpath = folder / name / "clinical.json"
            scaler = (
                ClinicalScaler.from_dict(json.loads(cpath.read_text())) if cpath.is_file() else None
            )
            members.append(Member(head, scaler))
    except (OSError, ValueError, KeyError) as e:
        raise AggregateError(f"{path}: unreadable model ({e})") from None
    return FittedModel(folder, doc, members)


def _threshold_from_run(
    cv_run: Path, head_name: str, clinical: bool, encoder_id: str
) -> tuple[float, str]:
    head_dir = Path(cv_run) / head_name
    oof_path, cfg_path = head_dir / "oof_predictions.csv", head_dir / "config.json"
    if not oof_path.is_file():
        raise AggregateError(
            f"{oof_path}: missing; run `cellbag cv ... --head {head_name} --out {cv_run}`"
        )
    key = json.loads(cfg_path.read_text()).get("key", {}) if cfg_path.is_file() else {}
    if key and (key.get("clinical") != clinical or key.get("encoder_id") != encoder_id):
        raise AggregateError(
            f"{cfg_path}: that cv run used clinical={key.get('clinical')}, encoder "
            f"{key.get('encoder_id')}; this fit uses clinical={clinical}, encoder {encoder_id}"
        )
    oof = pd.read_csv(oof_path)
    return youden_threshold(oof["label"].to_numpy(), oof["probability"].to_numpy()), str(oof_path)


def fit_model(
    store: Any,
    head: str,
    out: str | Path,
    encoder_id: str | None = None,
    clinical: bool = True,
    seed: int = 0,
    ensemble: int = 0,
    threshold: str | float = 0.5,
    cv_run: str | Path | None = None,
    params: dict | None = None,
    threads: int | None = None,
) -> FittedModel:
    """Train ``head`` on every training patient (or an ``ensemble``-fold ensemble whose
    members each leave one fold out) and write MODEL_DIR.

    ``threshold``: a number, or 'youden' — from ``cv_run``'s out-of-fold predictions of
    this head when given, else from the ensemble's out-of-fold predictions, else from an
    inner 5-fold cv on the training patients."""
    from sklearn.model_selection import StratifiedKFold

    st = open_store(store)
    data = load_bags(st, encoder_id, split="train")
    if clinical and not data.has_clinical:
        clinical = False
    params = dict(params or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(data)
    all_idx = np.arange(n)
    t0 = time.perf_counter()
    members: list[Member] = []
    oof = None
    with torch_threads(threads or default_threads()):
        if ensemble and ensemble >= 2:
            oof = np.full(n, np.nan)
            skf = StratifiedKFold(n_splits=ensemble, shuffle=True, random_state=seed)
            for k, (tr, te) in enumerate(skf.split(np.zeros(n), data.labels)):
                m = _fit_member(data, tr, head, clinical, seed + k, params)
                c = _clinical(m.scaler, data.patients.iloc[te] if clinical else None)
                oof[te] = m.head.predict_proba([data.bags[i] for i in te], c)
                members.append(m)
        else:
            members.append(_fit_member(data, all_idx, head, clinical, seed, params))
        thr_doc: dict[str, Any]
        if isinstance(threshold, str) and threshold.lower() == "youden":
            if cv_run is not None:
                value, source = _threshold_from_run(Path(cv_run), head, clinical, data.encoder_id)
            else:
                if oof is None:
                    oof = np.full(n, np.nan)
                    skf = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed + 1)
                    for k, (tr, te) in enumerate(skf.split(np.zeros(n), data.labels)):
                        m = _fit_member(data, tr, head, clinical, seed + 100 + k, params)
                        c = _clinical(m.scaler, data.patients.iloc[te] if clinical else None)
                        oof[te] = m.head.predict_proba([data.bags[i] for i in te], c)
                    source = "inner 5-fold cv on the training patients"
                else:
                    source = f"out-of-fold predictions of the {ensemble}-fold ensemble"
                value = youden_threshold(data.labels, oof)
            thr_doc = {"value": value, "method": "youden", "source": source}
        else:
            try:
                value = float(threshold)
            except ValueError:
                raise AggregateError(
                    f"--threshold must be a number or 'youden', not {threshold!r}"
                ) from None
            if not 0.0 <= value <= 1.0:
                raise AggregateError(f"--threshold {value} is not a probability in [0, 1]")
            thr_doc = {"value": value, "method": "fixed", "source": "given"}
    names = []
    for k, m in enumerate(members):
        name = f"member{k}"
        m.head.save(out / name)
        if m.scaler is not None:
            write_json(out / name / "clinical.json", m.scaler.to_dict(), indent=1)
        names.append(name)
    info = {}
    try:
        info = json.loads(json.dumps(st.encoder_info(data.encoder_id), default=str))
    except Exception:  # pragma: no cover
        pass
    doc = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "head": head,
        "params": members[0].head.get_params(),
        "clinical": clinical,
        "encoder_id": data.encoder_id,
        "encoder_info": info,
        "store": str(st.path),
        "embeddings_digest": data.digest,
        "members": names,
        "ensemble": int(ensemble or 0),
        "threshold": thr_doc,
        "n_train_patients": n,
        "train_prevalence": float(np.mean(data.labels)),
        "seconds": time.perf_counter() - t0,
        "versions": _versions(),
    }
    write_json(out / "model.json", doc, indent=1)
    return FittedModel(out, doc, members)


def write_submission(pred: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """``out``: ``Id,Predicted`` (0/1); ``<out stem>_proba.csv``: ``Id,Probability,Predicted``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sub = pd.DataFrame(
        {"Id": pred["patient_id"].astype(str), "Predicted": pred["predicted"].astype(int)}
    )
    proba = pd.DataFrame(
        {
            "Id": pred["patient_id"].astype(str),
            "Probability": pred["probability"].astype(float),
            "Predicted": pred["predicted"].astype(int),
        }
    )
    proba_path = out.with_name(out.stem + "_proba.csv")
    for df, path in ((sub, out), (proba, proba_path)):
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
    return out, proba_path
