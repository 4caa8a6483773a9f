"""The head interface shared by every aggregator: a scikit-learn classifier over bags.

A head is a ``BaseEstimator`` + ``ClassifierMixin`` whose constructor only stores its
arguments; ``fit(X, y)`` validates and trains, ``predict_proba(X)`` is (n, 2) in the order
of ``classes_``, ``predict(X)`` the class at probability 0.5. ``X`` is a sequence of
per-patient arrays (n_i, d) or a :class:`Bags` container that also carries clinical
features, so ``clone``, ``cross_val_score``, ``GridSearchCV`` and ``Pipeline`` work.

Clinical fusion is late fusion for every head: the head's image model gives each training
bag an *out-of-fold* log-odds (from an inner k-fold on the training bags, so a score is
never from a model that saw the bag), and a second-stage logistic regression on
``[image log-odds ; clinical features]`` (standardised, fitted on the training bags) gives
the fused probability. The image model never sees the clinical columns, so 6 clinical
columns are not drowned among hundreds of embedding dimensions under one penalty, and
the per-cell contributions (``cell_weights``) stay purely image-driven.

A fitted head saves to a folder as ``head.json`` + ``head.safetensors`` (+ text files,
e.g. a LightGBM model) — never a pickle.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import special
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from cellbag.aggregate.errors import AggregateError, HeadNotFittedError
from cellbag.core.io import atomic_path, safe_child, write_text

STATE_VERSION = 2
#: inner folds that give the training bags their out-of-fold image scores for late fusion
FUSION_FOLDS = 5


class Bags:
    """Per-patient bags (arrays (n_i, d)) with optional clinical features (n, c).

    Indexing by an int gives one bag; by a slice, a boolean mask or an index array gives
    a ``Bags`` of those patients (what scikit-learn's splitters and ``_safe_indexing``
    do); ``shape`` is ``(n,)``, so sklearn counts patients, not cells."""

    def __init__(self, bags: Sequence[np.ndarray], clinical: np.ndarray | None = None) -> None:
        self.bags = list(bags)
        if clinical is not None:
            clinical = np.asarray(clinical, dtype=np.float32)
            if clinical.ndim == 1:
                clinical = clinical[:, None]
            if clinical.shape[0] != len(self.bags):
                raise AggregateError(
                    f"clinical: {clinical.shape[0]} rows for {len(self.bags)} bags"
                )
        self.clinical = clinical

    def __len__(self) -> int:
        return len(self.bags)

    @property
    def shape(self) -> tuple[int]:
        return (len(self.bags),)

    def __iter__(self):
        return iter(self.bags)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple) and len(key) == 2 and key[1] is Ellipsis:
            key = key[0]  # sklearn's array indexing: X[idx, ...]
        if isinstance(key, (int, np.integer)):
            return self.bags[int(key)]
        idx = np.arange(len(self.bags))[key]
        clin = None if self.clinical is None else self.clinical[idx]
        return Bags([self.bags[i] for i in idx], clin)

    def __repr__(self) -> str:
        c = "no clinical" if self.clinical is None else f"clinical {self.clinical.shape[1]}"
        return f"Bags({len(self)} bags, {c})"


def as_bags(X: Any) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(bags, clinical or None) from a ``Bags`` or a sequence of arrays."""
    if isinstance(X, Bags):
        return X.bags, X.clinical
    if isinstance(X, np.ndarray) and X.ndim == 3:
        return list(X), None  # equal-sized bags as one (n, cells, d) array
    try:
        return list(X), None
    except TypeError:
        raise AggregateError(
            f"X: expected a sequence of (n_cells, dim) arrays or Bags, got {type(X).__name__}"
        ) from None


def check_bags(
    bags: Sequence[np.ndarray], dim: int | None = None, what: str = "bags"
) -> list[np.ndarray]:
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
        if width and not c.shape[1]:
            raise AggregateError(
                f"clinical: the head was fitted with {width} clinical columns; pass "
                "Bags(bags, clinical)"
            )
        raise AggregateError(f"clinical: {c.shape[1]} columns, the head was fitted with {width}")
    return c


def check_labels(y: Sequence[Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes (2,), labels encoded 0/1 (n,) int64); both classes must be present."""
    a = np.asarray(y)
    if a.shape != (n,):
        raise AggregateError(f"labels: shape {a.shape}, expected ({n},)")
    from sklearn.utils.multiclass import type_of_target

    kind = type_of_target(a, input_name="labels")
    if kind not in ("binary", "multiclass"):
        raise AggregateError(
            f"labels: Unknown label type: {kind} values; expected two classes (0/1 or two names)"
        )
    classes = np.unique(a)
    if len(classes) < 2:
        raise AggregateError(f"labels: training needs both classes, got one class ({a[0]!r})")
    if len(classes) > 2:
        raise AggregateError(
            f"labels: {len(classes)} classes given. Only binary classification is supported."
        )
    return classes, (a == classes[1]).astype(np.int64)


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds (``scipy.special.logit``) of probabilities clipped to [1e-6, 1 - 1e-6], so a
    probability of exactly 0 or 1 gives a finite score."""
    return special.logit(np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6))


class LateFusion:
    """Second stage: class-balanced logistic regression on standardised
    ``[image log-odds ; clinical]``, fitted on out-of-fold image scores of training bags."""

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, z: np.ndarray, clinical: np.ndarray, y: np.ndarray) -> LateFusion:
        from sklearn.linear_model import LogisticRegression

        x = np.column_stack([z, clinical]).astype(np.float64)
        self.mean_, self.std_ = standardizer(x)
        m = LogisticRegression(C=self.C, class_weight="balanced", max_iter=5000)
        m.fit((x - self.mean_) / self.std_, y)
        self.coef_ = m.coef_[0].astype(np.float64)
        self.intercept_ = float(m.intercept_[0])
        return self

    def decision(self, z: np.ndarray, clinical: np.ndarray) -> np.ndarray:
        x = np.column_stack([z, clinical]).astype(np.float64)
        return ((x - self.mean_) / self.std_) @ self.coef_ + self.intercept_

    def parts(self, z: np.ndarray, clinical: np.ndarray) -> dict[str, np.ndarray]:
        """The fused log-odds as a sum of three terms, exactly (one linear model): ``base``
        (the intercept), ``image`` (the image score's term) and ``clinical`` (the clinical
        values' terms together), each (n,) float64."""
        x = np.column_stack([z, clinical]).astype(np.float64)
        terms = ((x - self.mean_) / self.std_) * self.coef_
        n = len(x)
        return {
            "base": np.full(n, self.intercept_),
            "image": terms[:, 0],
            "clinical": terms[:, 1:].sum(axis=1),
        }

    def state(self, prefix: str = "fusion.") -> dict[str, np.ndarray]:
        return {
            f"{prefix}mean": np.asarray(self.mean_, np.float64),
            f"{prefix}std": np.asarray(self.std_, np.float64),
            f"{prefix}coef": self.coef_,
            f"{prefix}intercept": np.asarray([self.intercept_]),
        }

    def set_state(self, arrays: dict[str, np.ndarray], prefix: str = "fusion.") -> LateFusion:
        self.mean_ = arrays[f"{prefix}mean"]
        self.std_ = arrays[f"{prefix}std"]
        self.coef_ = arrays[f"{prefix}coef"]
        self.intercept_ = float(arrays[f"{prefix}intercept"][0])
        return self


class PlattScaling(LateFusion):
    """Margins to log-odds: the one-column case of :class:`LateFusion` (Platt, 1999),
    fitted on out-of-fold margins of the training bags."""

    def fit(self, z: np.ndarray, y: np.ndarray) -> PlattScaling:  # type: ignore[override]
        return super().fit(z, np.zeros((len(z), 0)), y)

    def decision(self, z: np.ndarray) -> np.ndarray:  # type: ignore[override]
        return super().decision(z, np.zeros((len(z), 0)))

    def state(self, prefix: str = "platt.") -> dict[str, np.ndarray]:
        return super().state(prefix)

    def set_state(self, arrays: dict[str, np.ndarray], prefix: str = "platt.") -> PlattScaling:
        return super().set_state(arrays, prefix)


@dataclass
class _SharedFit:
    bags: list[np.ndarray]
    state: dict[str, Any]
    oof: np.ndarray | None


#: image models fitted inside :func:`shared_fits`, by what decides them
_SHARED_FITS: ContextVar[dict | None] = ContextVar("cellbag_shared_fits", default=None)


@contextmanager
def shared_fits() -> Iterator[None]:
    """Within this block, a head whose image model is the very fit another head already
    made here (same head class and settings but ``clinical``, the same bag arrays and
    labels, hence the same seed) shares that model instead of training it again: the
    ensemble's members and the stand-alone heads of one cv fold, or a fused head and its
    image-only twin. Fits are deterministic for a seed, so the numbers are the ones a
    refit gives; only the time differs. Off outside the block (nothing is kept)."""
    token = _SHARED_FITS.set({})
    try:
        yield
    finally:
        _SHARED_FITS.reset(token)


class Head(ClassifierMixin, BaseEstimator):
    """Base class of every aggregator. Subclasses implement ``_fit`` (image model only),
    ``_decision`` (image log-odds of class 1), ``_get_state``/``_set_state`` and, for
    heads with per-cell weights, ``_cell_weights``."""

    name: ClassVar[str] = "head"
    #: True when the head pools with learned per-cell weights (``cell_weights`` works)
    has_cell_weights: ClassVar[bool] = False
    #: False for heads without an image model (the clinical baseline)
    image_model: ClassVar[bool] = True

    def __init__(self, clinical: bool = True, seed: int = 0) -> None:
        self.clinical = clinical
        self.seed = seed

    @property
    def fitted(self) -> bool:
        return hasattr(self, "dim_")

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # tumoral or reactive: two classes
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return self.fitted

    # -- scikit-learn interface -------------------------------------------------------------
    def fit(self, X: Any, y: Sequence[Any]) -> Head:
        """Train on bags (``X``: arrays or ``Bags``; its clinical features are used, by late
        fusion, when ``self.clinical``)."""
        given, clin = as_bags(X)
        bags = check_bags(given)
        # bags that were converted are new arrays: no other fit can share them
        shareable = all(a is b for a, b in zip(given, bags, strict=True))
        use = bool(self.clinical) and clin is not None and clin.shape[1] > 0
        c = check_clinical(clin if use else None, len(bags))
        self.classes_, labels = check_labels(y, len(bags))
        self.dim_ = int(bags[0].shape[1])
        self.n_clinical_ = int(c.shape[1])
        with blas_single_thread():
            oof = self._fit_image(bags, labels) if shareable else self._fit(bags, labels)
            if self.n_clinical_:
                if oof is None:
                    oof = self._inner_oof(bags, labels)
                self.fusion_ = LateFusion().fit(oof, c, labels)
                oof = self.fusion_.decision(oof, c) if oof is not None else None
        if oof is not None and self.image_model:
            # each training bag's probability from models that did not see it (the fusion
            # stage, a handful of coefficients, is the one part fitted on all of them)
            self.train_oof_proba_ = special.expit(oof)
        return self

    def _fit_image(self, bags: list[np.ndarray], labels: np.ndarray) -> np.ndarray | None:
        """``_fit``, or inside :func:`shared_fits` the image model of an earlier head that
        made the very same fit (same class, settings but ``clinical``, bag arrays, labels):
        its fitted attributes are shared, not refitted."""
        memo = _SHARED_FITS.get()
        if memo is None:
            return self._fit(bags, labels)
        params = {k: v for k, v in self.settings().items() if k != "clinical"}
        key = (
            type(self).__module__,
            type(self).__qualname__,
            json.dumps(params, sort_keys=True, default=repr),
            tuple(id(b) for b in bags),
            labels.tobytes(),
        )
        hit = memo.get(key)
        if hit is not None and all(a is b for a, b in zip(hit.bags, bags, strict=True)):
            self.__dict__.update(hit.state)
            return None if hit.oof is None else hit.oof.copy()
        before = dict(self.__dict__)
        oof = self._fit(bags, labels)
        state = {k: v for k, v in self.__dict__.items() if k not in before or before[k] is not v}
        # the entry holds the bags themselves, so their ids cannot be reused while it lives
        memo[key] = _SharedFit(list(bags), state, None if oof is None else np.array(oof))
        return oof

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-odds of ``classes_[1]`` per bag, float64 (n,)."""
        b, c = self._inputs(X)
        with blas_single_thread():
            z = np.asarray(self._decision(b), dtype=np.float64)
        return self.fusion_.decision(z, c) if self.n_clinical_ else z

    def decision_parts(self, X: Any) -> dict[str, np.ndarray] | None:
        """Each bag's fused log-odds split into ``base`` + ``image`` + ``clinical`` terms
        (they sum to :meth:`decision_function`); None for a head without late fusion of
        an image score (images only, or the clinical baseline)."""
        if not self.n_clinical_ or not self.image_model:
            return None
        b, c = self._inputs(X)
        with blas_single_thread():
            z = np.asarray(self._decision(b), dtype=np.float64)
        return self.fusion_.parts(z, c)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities (n, 2), columns in the order of ``classes_``."""
        p = special.expit(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """The class at probability 0.5."""
        z = self.decision_function(X)  # first: an unfitted head raises NotFittedError
        return self.classes_[(z >= 0).astype(int)]

    def cell_weights(self, X: Any) -> list[np.ndarray]:
        """Per-cell pooling weights (each bag's weights sum to 1); attention heads only."""
        if not self.has_cell_weights:
            raise AggregateError(f"head {self.name!r} has no per-cell weights")
        b, _ = self._inputs(X, clinical=False)
        with blas_single_thread():
            return self._cell_weights(b)

    def _inputs(self, X: Any, clinical: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
        """Checked bags and clinical features (these only when ``clinical``: the image
        model alone needs none)."""
        if not self.fitted:
            raise HeadNotFittedError(f"head {self.name!r}: call fit() first")
        bags, clin = as_bags(X)
        b = check_bags(bags, self.dim_)
        if not clinical:
            return b, check_clinical(None, len(b))
        c = check_clinical(clin if self.n_clinical_ else None, len(b), self.n_clinical_)
        return b, c

    def settings(self) -> dict[str, Any]:
        """Everything that decides what ``fit`` learns: the parameters, plus for heads made
        of other heads their members' (``cv`` recomputes finished folds when it changes)."""
        return self.get_params(deep=False)

    def _inner_oof(self, bags: list[np.ndarray], y: np.ndarray) -> np.ndarray:
        """Out-of-fold image log-odds of the training bags from an inner stratified k-fold
        of image-only twins (heads whose training already yields them return them from
        ``_fit`` instead)."""
        from sklearn.model_selection import StratifiedKFold

        k = int(min(FUSION_FOLDS, np.bincount(y).min()))
        if k < 2:  # too few bags of a class for an inner split: in-sample scores
            return np.asarray(self._decision(bags), dtype=np.float64)
        oof = np.zeros(len(y))
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
        for tr, te in skf.split(np.zeros(len(y)), y):
            twin = clone(self).set_params(clinical=False)
            twin.fit([bags[i] for i in tr], y[tr])
            oof[te] = twin._decision([bags[i] for i in te])
        return oof

    # -- per-cell contributions (the report's explanations) ---------------------------------
    #: what ``cell_contributions`` measures: attention | logit | argmax | cluster gain
    contribution_kind: ClassVar[str] = "attention"

    def cell_contributions(self, X: Any) -> list[np.ndarray]:
        """One score per cell, higher = pulls the bag towards class 1 (or, for attention and
        cluster gain, weighs more in the decision); see ``contribution_kind``. Image-only:
        the clinical features of ``X``, if any, play no part."""
        if self.has_cell_weights:
            return self.cell_weights(X)
        b, _ = self._inputs(X, clinical=False)
        with blas_single_thread():
            return self._cell_contributions(b)

    def _cell_contributions(self, bags: list[np.ndarray]) -> list[np.ndarray]:
        raise AggregateError(f"head {self.name!r} gives no per-cell contributions")

    def _occlusion(self, bags: list[np.ndarray]) -> list[np.ndarray]:
        """Per cell, how much the bag's image log-odds drops when the cell is left out
        (0 for a bag of one cell): the ``occlusion`` kind of contribution."""
        out = []
        for b in bags:
            if len(b) == 1:
                out.append(np.zeros(1))
            else:
                full = float(np.asarray(self._decision([b]), np.float64)[0])
                out.append(full - self._loo_decisions(b))
        return out

    def _loo_decisions(self, bag: np.ndarray) -> np.ndarray:
        """Image log-odds of ``bag`` without each of its cells, (n,); heads with a faster
        exact form override it."""
        n = len(bag)
        out = np.empty(n)
        for start in range(0, n, 64):  # 64 leave-one-out bags at a time
            idx = range(start, min(n, start + 64))
            out[idx.start : idx.stop] = self._decision([np.delete(bag, i, 0) for i in idx])
        return out

    # -- to implement -----------------------------------------------------------------------
    def _fit(self, bags: list[np.ndarray], y: np.ndarray) -> np.ndarray | None:
        """Fit the image model on labels 0/1; may return out-of-fold log-odds of the bags."""
        raise NotImplementedError

    def _decision(self, bags: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _cell_weights(self, bags: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def _get_state(self) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
        """(json metadata, named arrays, named text files) of the fitted image model."""
        raise NotImplementedError

    def _set_state(self, meta: dict, arrays: dict[str, np.ndarray], texts: dict[str, str]) -> None:
        raise NotImplementedError

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``head.json``, ``head.safetensors`` and text files to ``folder``."""
        from safetensors.numpy import save_file

        if not self.fitted:
            raise HeadNotFittedError(f"head {self.name!r}: nothing to save, call fit() first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta, arrays, texts = self._get_state()
        if self.n_clinical_:
            arrays.update(self.fusion_.state())
        for fname, text in texts.items():
            write_text(folder / fname, text)
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        with atomic_path(folder / "head.safetensors") as tmp:
            save_file(arrays, str(tmp))
        doc = {
            "head": self.name,
            "state_version": STATE_VERSION,
            "params": self.get_params(deep=False),
            "classes": self.classes_.tolist(),
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
            if doc.get("state_version") != STATE_VERSION:
                raise ValueError(
                    f"saved by another cellbag version (state {doc.get('state_version')}, "
                    f"this one reads {STATE_VERSION}); fit it again"
                )
            head = make_head(doc["head"], **dict(doc["params"]))
            arrays = load_file(str(folder / "head.safetensors"))
            # a saved head is data from others: its text files are plain names inside
            # the folder (a name like ``../x`` or a link out of it is refused, not read)
            texts = {
                f: safe_child(folder, f, error=AggregateError, what="saved text file").read_text()
                for f in doc.get("texts", [])
            }
            head.classes_ = np.asarray(doc["classes"])
            head.dim_ = int(doc["dim"])
            head.n_clinical_ = int(doc["n_clinical"])
            if head.n_clinical_:
                head.fusion_ = LateFusion().set_state(arrays)
            head._set_state(doc["meta"], arrays, texts)
        except AggregateError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise AggregateError(f"{folder}: unreadable saved head ({e})") from None
        return head


def blas_single_thread():
    """Context: numpy's BLAS on one thread. The matrices here are small; two OpenBLAS
    threads on a busy 2-core machine made a 384x384 eigh 15x slower in our measurements.
    (torch's own intra-op threads are left alone.)"""
    from threadpoolctl import ThreadpoolController

    global _BLAS
    # a controller finds the loaded libraries by scanning the process's memory map (~5 ms
    # each time: 2 s of a fused meanpool cv); it is made again once a module was imported
    # since, as that may have loaded another BLAS
    ctl, n_modules = _BLAS
    if ctl is None or n_modules != len(sys.modules):
        ctl = ThreadpoolController()
        _BLAS = (ctl, len(sys.modules))
    return ctl.limit(limits=1, user_api="blas")


#: (the threadpoolctl controller, how many modules were imported when it was made)
_BLAS: tuple[Any, int] = (None, -1)


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (std floored) of training rows."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)
