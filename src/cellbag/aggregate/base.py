"""The head interface shared by every aggregator (scikit-learn style).

A head is built with plain arguments (stored, not validated), validated and trained in
``fit(bags, clinical, y)``; ``predict_proba`` returns the probability of class 1 per
bag; attention heads also give ``cell_weights`` (one array per bag, summing to 1).
A fitted head saves to a folder as ``head.json`` + ``head.safetensors`` (+ text files,
e.g. a LightGBM model) — never a pickle.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cellbag.aggregate.errors import AggregateError
from cellbag.core.io import atomic_path, write_text

Bags = Sequence[np.ndarray]
STATE_VERSION = 1


def check_bags(bags: Bags, dim: int | None = None, what: str = "bags") -> list[np.ndarray]:
    """Validate ragged bags: a list of 2-D float arrays, >= 1 cell each, one common width."""
    out: list[np.ndarray] = []
    if len(bags) == 0:
        raise AggregateError(f"{what}: no bags given")
    for i, b in enumerate(bags):
        a = np.asarray(b)
        if a.ndim != 2:
            raise AggregateError(f"{what}[{i}]: expected (n_cells, dim), got shape {a.shape}")
        if a.shape[0] == 0:
            raise AggregateError(f"{what}[{i}]: empty bag (0 cells)")
        if dim is None:
            dim = a.shape[1]
        elif a.shape[1] != dim:
            raise AggregateError(f"{what}[{i}]: width {a.shape[1]} differs from {dim}")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise AggregateError(f"{what}[{i}]: non-finite values in the embeddings")
        out.append(a)
    return out


def check_clinical(clinical: np.ndarray | None, n: int, width: int | None = None) -> np.ndarray:
    """Clinical features as float32 (n, c); ``None`` becomes (n, 0)."""
    if clinical is None:
        c = np.zeros((n, 0), np.float32)
    else:
        c = np.asarray(clinical, dtype=np.float32)
        if c.ndim == 1:
            c = c[:, None]
        if c.shape[0] != n:
            raise AggregateError(f"clinical: {c.shape[0]} rows for {n} bags")
        if not np.isfinite(c).all():
            raise AggregateError("clinical: non-finite values (impute before fitting)")
    if width is not None and c.shape[1] != width:
        raise AggregateError(f"clinical: {c.shape[1]} columns, the head was fitted with {width}")
    return c


def check_labels(y: Sequence[int], n: int) -> np.ndarray:
    """Binary labels (n,) int64 holding both classes."""
    a = np.asarray(y)
    if a.shape != (n,):
        raise AggregateError(f"labels: shape {a.shape}, expected ({n},)")
    if not np.isin(a, (0, 1)).all():
        raise AggregateError("labels: only 0 and 1 are allowed")
    if len(np.unique(a)) < 2:
        raise AggregateError("labels: training needs both classes")
    return a.astype(np.int64)


class Head:
    """Base class of every aggregator. Subclasses implement ``_fit``, ``_predict`` and state."""

    name: ClassVar[str] = "head"
    #: True when the head pools with learned per-cell weights (``cell_weights`` works)
    has_cell_weights: ClassVar[bool] = False

    def __init__(self, clinical: bool = True, seed: int = 0) -> None:
        self.clinical = clinical
        self.seed = seed

    # -- scikit-learn style ---------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (what rebuilds an unfitted twin)."""
        params: dict[str, Any] = {}
        for cls in type(self).__mro__:
            if "__init__" not in cls.__dict__:
                continue
            for p in inspect.signature(cls.__init__).parameters.values():
                if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD:
                    params.setdefault(p.name, getattr(self, p.name))
        return params

    @property
    def fitted(self) -> bool:
        return hasattr(self, "dim_")

    def fit(self, bags: Bags, clinical: np.ndarray | None, y: Sequence[int]) -> Head:
        """Train on ragged bags (+ clinical features when ``self.clinical``)."""
        bags = check_bags(bags)
        c = check_clinical(clinical if self.clinical else None, len(bags))
        labels = check_labels(y, len(bags))
        self.dim_ = int(bags[0].shape[1])
        self.n_clinical_ = int(c.shape[1])
        with blas_single_thread():
            self._fit(bags, c, labels)
        return self

    def _inputs(
        self, bags: Bags, clinical: np.ndarray | None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        if not self.fitted:
            raise AggregateError(f"head {self.name!r}: call fit() first")
        b = check_bags(bags, self.dim_)
        c = check_clinical(clinical if self.clinical else None, len(b), self.n_clinical_)
        return b, c

    def predict_proba(self, bags: Bags, clinical: np.ndarray | None = None) -> np.ndarray:
        """Probability of class 1 (tumoral) per bag, float64 (n,)."""
        b, c = self._inputs(bags, clinical)
        with blas_single_thread():
            return np.asarray(self._predict(b, c), dtype=np.float64)

    def cell_weights(self, bags: Bags, clinical: np.ndarray | None = None) -> list[np.ndarray]:
        """Per-cell pooling weights (each bag's weights sum to 1); attention heads only."""
        if not self.has_cell_weights:
            raise AggregateError(f"head {self.name!r} has no per-cell weights")
        b, c = self._inputs(bags, clinical)
        with blas_single_thread():
            return self._cell_weights(b, c)

    # -- per-cell contributions (the report's explanations) ---------------------------------
    #: what ``cell_contributions`` measures: attention | logit | argmax | cluster gain
    contribution_kind: ClassVar[str] = "attention"

    def cell_contributions(
        self, bags: Bags, clinical: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """One score per cell, higher = pulls the bag towards class 1 (or, for attention and
        cluster gain, weighs more in the decision); see ``contribution_kind``."""
        if self.has_cell_weights:
            return self.cell_weights(bags, clinical)
        b, c = self._inputs(bags, clinical)
        with blas_single_thread():
            return self._cell_contributions(b, c)

    def _cell_contributions(self, bags: list[np.ndarray], clinical: np.ndarray) -> list[np.ndarray]:
        raise AggregateError(f"head {self.name!r} gives no per-cell contributions")

    # -- to implement -----------------------------------------------------------------------
    def _fit(self, bags: list[np.ndarray], clinical: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, bags: list[np.ndarray], clinical: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _cell_weights(self, bags: list[np.ndarray], clinical: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def _get_state(self) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
        """(json metadata, named arrays, named text files) of the fitted head."""
        raise NotImplementedError

    def _set_state(self, meta: dict, arrays: dict[str, np.ndarray], texts: dict[str, str]) -> None:
        raise NotImplementedError

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``head.json``, ``head.safetensors`` and text files to ``folder``."""
        from safetensors.numpy import save_file

        if not self.fitted:
            raise AggregateError(f"head {self.name!r}: nothing to save, call fit() first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta, arrays, texts = self._get_state()
        for fname, text in texts.items():
            write_text(folder / fname, text)
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        with atomic_path(folder / "head.safetensors") as tmp:
            save_file(arrays, str(tmp))
        doc = {
            "head": self.name,
            "state_version": STATE_VERSION,
            "params": self.get_params(),
            "dim": self.dim_,
            "n_clinical": self.n_clinical_,
            "texts": sorted(texts),
            "meta": meta,
        }
        write_text(folder / "head.json", json.dumps(doc, indent=2))
        return folder

    @staticmethod
    def load(folder: str | Path) -> Head:
        """Rebuild a fitted head saved with ``save``."""
        from safetensors.numpy import load_file

        from cellbag.aggregate.registry import make_head

        folder = Path(folder)
        doc_path = folder / "head.json"
        if not doc_path.is_file():
            raise AggregateError(f"{doc_path}: no saved head here (run `cellbag fit` first)")
        try:
            doc = json.loads(doc_path.read_text())
            params = dict(doc["params"])
            head = make_head(doc["head"], **params)
            arrays = load_file(str(folder / "head.safetensors"))
            texts = {f: (folder / f).read_text() for f in doc.get("texts", [])}
        except (OSError, KeyError, ValueError) as e:
            raise AggregateError(f"{folder}: unreadable saved head ({e})") from None
        head.dim_ = int(doc["dim"])
        head.n_clinical_ = int(doc["n_clinical"])
        head._set_state(doc["meta"], arrays, texts)
        return head


def blas_single_thread():
    """Context: numpy's BLAS on one thread. The matrices here are small; two OpenBLAS
    threads on a busy 2-core machine made a 384x384 eigh 15x slower in our measurements.
    (torch's own intra-op threads are left alone.)"""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (std floored) of training rows."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)
