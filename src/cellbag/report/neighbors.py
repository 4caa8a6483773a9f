"""Look-alike cells in other patients (from the retrieval index) for the report."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cellbag.report.errors import ReportError

_SCORE_COLUMNS = ("score", "similarity", "cosine", "distance")


class NeighborFinder:
    """Queries ``cellbag.retrieval.neighbors`` and joins each hit's path and patient label."""

    def __init__(self, store: Any, encoder_id: str) -> None:
        import cellbag.retrieval as retrieval  # raises ImportError when not available

        if hasattr(retrieval, "Retriever"):  # one loaded index for every query
            r = retrieval.Retriever(store, encoder_id)
            self._neighbors = lambda _s, _e, **kw: r.query(**kw)
        else:
            self._neighbors = retrieval.neighbors
        self.store = store
        self.encoder_id = encoder_id
        cells = store.cells()
        self._cells = cells.set_index(cells["cell_id"].astype(str))
        pats = store.patients()
        self._patients = pats.set_index(pats["patient_id"].astype(str))
        self._cache: dict[tuple[str, int], pd.DataFrame] = {}

    def patient_label(self, patient_id: str) -> int | None:
        """The stored label of a patient (None for unlabelled test patients)."""
        if patient_id not in self._patients.index:
            return None
        v = self._patients.at[patient_id, "label"]
        return None if pd.isna(v) else int(v)

    def patient_split(self, patient_id: str) -> str | None:
        if patient_id not in self._patients.index or "split" not in self._patients.columns:
            return None
        v = self._patients.at[patient_id, "split"]
        return None if pd.isna(v) else str(v)

    def query(self, cell_id: str, k: int) -> pd.DataFrame:
        """The ``k`` nearest cells of other patients: cell_id, patient_id, path, label, split, score."""
        key = (cell_id, k)
        if key in self._cache:
            return self._cache[key]
        if cell_id not in self._cells.index:
            raise ReportError(
                f"cell {cell_id} of the run is not in store {getattr(self.store, 'path', self.store)}"
                " (was the run made from another store?)"
            )
        hits = self._neighbors(
            self.store, self.encoder_id, cell_id=cell_id, k=k, other_patients=True
        ).copy()
        if "cell_id" not in hits.columns:
            raise ReportError(
                f"cellbag.retrieval.neighbors returned no cell_id column (has: {list(hits.columns)})"
            )
        hits["cell_id"] = hits["cell_id"].astype(str)
        hits = hits[hits["cell_id"] != cell_id]
        known = self._cells.reindex(hits["cell_id"])
        if "patient_id" not in hits.columns:
            hits["patient_id"] = known["patient_id"].to_numpy()
        hits["patient_id"] = hits["patient_id"].astype(str)
        if "path" not in hits.columns:
            hits["path"] = known["path"].to_numpy()
        score = next((c for c in _SCORE_COLUMNS if c in hits.columns), None)
        hits["score"] = hits[score].astype(float) if score else float("nan")
        hits["score_kind"] = score or ""
        hits["label"] = [self.patient_label(p) for p in hits["patient_id"]]
        hits["split"] = [self.patient_split(p) for p in hits["patient_id"]]
        out = hits[["cell_id", "patient_id", "path", "label", "split", "score", "score_kind"]]
        out = out.head(k).reset_index(drop=True)
        self._cache[key] = out
        return out
