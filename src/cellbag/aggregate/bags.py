"""Bags in memory: read once from a store (or built from arrays), with the cells' ids and
paths and the patients' clinical columns. Labels are taken from training patients only;
the label column of every other patient is dropped before anything else sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cellbag.aggregate.errors import AggregateError
from cellbag.data.clinical import CLINICAL_COLUMNS, extra_clinical_columns, has_clinical_values


@dataclass
class BagSet:
    """Ragged bags of one split with what the aggregate stage needs about them."""

    patient_ids: list[str]
    bags: list[np.ndarray]
    #: patient_id + clinical columns (gender, dob, lymph_count) — never a label column;
    #: or None, with ``clinical_matrix`` holding raw numeric features instead
    patients: pd.DataFrame | None = None
    labels: np.ndarray | None = None
    cell_ids: list[np.ndarray] | None = None
    cell_paths: list[np.ndarray] | None = None
    clinical_matrix: np.ndarray | None = None
    encoder_id: str = "arrays"
    source: str = "arrays"
    digest: str = ""
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.bags)

    @property
    def has_clinical(self) -> bool:
        """Whether any clinical value is present."""
        if self.clinical_matrix is not None:
            return self.clinical_matrix.shape[1] > 0
        return self.patients is not None and has_clinical_values(self.patients)

    def subset(self, idx: np.ndarray) -> BagSet:
        """The bags at positions ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return BagSet(
            patient_ids=[self.patient_ids[i] for i in idx],
            bags=[self.bags[i] for i in idx],
            patients=None
            if self.patients is None
            else self.patients.iloc[idx].reset_index(drop=True),
            labels=None if self.labels is None else self.labels[idx],
            cell_ids=pick(self.cell_ids),
            cell_paths=pick(self.cell_paths),
            clinical_matrix=None if self.clinical_matrix is None else self.clinical_matrix[idx],
            encoder_id=self.encoder_id,
            source=self.source,
            digest=self.digest,
        )

    @classmethod
    def from_arrays(
        cls,
        bags: list[np.ndarray],
        labels: np.ndarray | None = None,
        patient_ids: list[str] | None = None,
        clinical: np.ndarray | pd.DataFrame | None = None,
    ) -> BagSet:
        """Bags without a store: ``clinical`` is a patients table (gender, dob,
        lymph_count; scaled by ``ClinicalScaler``) or a raw numeric matrix (standardised)."""
        n = len(bags)
        pids = (
            [str(p) for p in patient_ids]
            if patient_ids is not None
            else [f"P{i}" for i in range(n)]
        )
        patients, matrix = None, None
        if isinstance(clinical, pd.DataFrame):
            patients = clinical.drop(columns=["label"], errors="ignore").reset_index(drop=True)
            if "patient_id" not in patients:
                patients.insert(0, "patient_id", pids)
        elif clinical is not None:
            matrix = np.asarray(clinical, dtype=np.float32).reshape(n, -1)
        y = None if labels is None else np.asarray(labels).astype(np.int64)
        cell_ids = [
            np.array([f"{p}/{j}" for j in range(len(b))], dtype=object)
            for p, b in zip(pids, bags, strict=True)
        ]
        return cls(pids, list(bags), patients, y, cell_ids, None, matrix)


def resolve_encoder(store: Any, encoder_id: str | None) -> str:
    """The encoder meant by an id or a model name, or the store's only one when None."""
    from cellbag.store.resolve import resolve_encoder as resolve

    return resolve(store, encoder_id)


def open_store(store: Any) -> Any:
    """A ``Store`` from a path/URL or an open store."""
    if isinstance(store, str) or hasattr(store, "__fspath__"):
        from cellbag.store import Store

        return Store.open(store, mode="r")
    return store


def load_bags(store: Any, encoder_id: str | None = None, split: str = "train") -> BagSet:
    """Read every bag of ``split`` ('train', 'test' or 'all') for an encoder, in one pass.

    Raises the store's error (naming the command to run) when the encoder is missing or
    unfinished. Labels are read for 'train' only; patients without usable cells are
    skipped and listed in ``skipped``."""
    store = open_store(store)
    encoder_id = resolve_encoder(store, encoder_id)
    store.require_complete(encoder_id)
    if split != "test":  # never train on labels the cohort's CSV no longer holds
        from cellbag.store.sync import require_labels_in_sync

        require_labels_in_sync(store)
    patients = store.patients()
    all_pids = patients["patient_id"].astype(str).tolist()
    if split == "all":
        rows = patients
    elif split in ("train", "test"):
        rows = patients[patients["split"].astype(str) == split]
    else:
        raise AggregateError(f"split must be 'train', 'test' or 'all', not {split!r}")
    labels = None
    if split == "train":
        lab = rows["label"]
        if lab.isna().any():
            bad = rows.loc[lab.isna(), "patient_id"].astype(str).tolist()
            raise AggregateError(
                f"{store.path}: training patients without a label: {', '.join(bad[:5])}"
                + (" ..." if len(bad) > 5 else "")
            )
        labels = lab.to_numpy(dtype=np.int64)
    extra = extra_clinical_columns(rows)  # further clinical columns of an imported store
    keep_cols = ["patient_id", "split", *[c for c in CLINICAL_COLUMNS if c in rows], *extra]
    rows = rows[keep_cols].reset_index(drop=True)  # the label column stops here
    if len(rows) == 0:
        raise AggregateError(f"{store.path}: no {split} patients in this store")
    pids = rows["patient_id"].astype(str).tolist()
    bags = store.bags(encoder_id, pids)
    cells = store.cells(encoder_id)  # this encoder's status: rows match its bags
    offsets = np.asarray(store.offsets)
    pos = {p: i for i, p in enumerate(all_pids)}
    ok = (cells["status"].astype(str) == "ok").to_numpy()
    cid = cells["cell_id"].astype(str).to_numpy(dtype=object)
    cpath = cells["path"].astype(str).to_numpy(dtype=object)
    cell_ids, cell_paths = [], []
    for p in pids:
        i = pos[p]
        a, b = int(offsets[i]), int(offsets[i + 1])
        m = ok[a:b]
        cell_ids.append(cid[a:b][m])
        cell_paths.append(cpath[a:b][m])
    keep = [i for i, b in enumerate(bags) if len(b) > 0]
    skipped = [pids[i] for i in range(len(pids)) if len(bags[i]) == 0]
    for i in keep:
        if len(cell_ids[i]) != len(bags[i]):  # pragma: no cover - store invariant
            raise AggregateError(f"{store.path}: patient {pids[i]}: cells and embeddings disagree")
    data = BagSet(
        patient_ids=pids,
        bags=bags,
        patients=rows,
        labels=labels,
        cell_ids=cell_ids,
        cell_paths=cell_paths,
        encoder_id=encoder_id,
        source=str(store.path),
        digest=store.embeddings_digest(encoder_id),
    )
    if skipped:
        data = data.subset(np.asarray(keep))
        data.skipped = skipped
    return data
