"""An ensemble and its members in one cv share their fits: the same numbers, fewer fits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cellbag.aggregate.base import shared_fits
from cellbag.aggregate.heads.pooling import MeanPoolHead
from cellbag.aggregate.heads.svm import KernelSVMHead
from cellbag.aggregate.synthetic import witness_store
from cellbag.evaluate import run_cv
from cellbag.evaluate.fitting import FoldTask, fold_groups

ENSEMBLE = {"ensemble": {"members": ["meanpool", "svm"]}}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("shared") / "store.zarr"
    witness_store(str(path), n_train=30, n_test=0, cells=(8, 12), dim=8, seed=5)
    return str(path)


def _cv(store: str, out: Path, heads: str, **kw) -> Path:
    run_cv(store, out=out, heads=heads, folds=3, repeats=1, seed=2, head_params=ENSEMBLE,
           inner_folds=2, quiet=True, **kw)  # fmt: skip
    return out


def _ensemble(out: Path) -> tuple[dict, bytes]:
    m = json.loads((out / "ensemble" / "metrics.json").read_text())
    for key in ("seconds", "best", "vs_best"):  # timing, and the comparison with the others
        m.pop(key, None)
    return m, (out / "ensemble" / "oof_predictions.csv").read_bytes()


class _Count:
    """Counts ``_fit`` calls of a head class (this process only: ``jobs=1``)."""

    def __init__(self, monkeypatch, cls) -> None:
        self.n = 0
        real = cls._fit

        def counted(head, bags, y):
            self.n += 1
            return real(head, bags, y)

        monkeypatch.setattr(cls, "_fit", counted)


@pytest.mark.parametrize("clinical", [False, True])
def test_an_ensemble_beside_its_members_gives_its_own_figures_with_fewer_fits(
    store, tmp_path, monkeypatch, clinical
):
    svm = _Count(monkeypatch, KernelSVMHead)
    alone = _ensemble(_cv(store, tmp_path / "alone", "ensemble", clinical=clinical, jobs=1))
    fits_alone = svm.n
    svm.n = 0
    _cv(store, tmp_path / "svm", "svm", clinical=clinical, jobs=1)
    fits_svm = svm.n
    svm.n = 0
    both = _cv(store, tmp_path / "both", "meanpool,svm,ensemble", clinical=clinical, jobs=1)
    assert _ensemble(both) == alone
    # the ensemble's svm member is the stand-alone svm's fit of each fold: no extra fits
    assert fits_alone > 0 and svm.n == fits_svm
    if clinical:  # the same figures on two workers, whose groups keep them together
        two = _cv(store, tmp_path / "two", "meanpool,svm,ensemble", clinical=clinical, jobs=2)
        assert _ensemble(two) == alone


def test_a_shared_fit_is_the_fit_itself():
    """Inside ``shared_fits`` an image-only twin of a fused head takes its image model;
    a changed setting, other bags or other labels are fitted anew."""
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(int(rng.integers(5, 9)), 6)).astype(np.float32) for _ in range(24)]
    y = np.arange(24) % 2
    clin = rng.normal(size=(24, 2))
    from cellbag.aggregate.base import Bags

    ref = MeanPoolHead(clinical=False, seed=1).fit(bags, y).decision_function(bags)
    with shared_fits():
        fused = MeanPoolHead(clinical=True, seed=1).fit(Bags(bags, clin), y)
        twin = MeanPoolHead(clinical=False, seed=1).fit(bags, y)
        other = MeanPoolHead(clinical=False, seed=1, C=0.5).fit(bags, y)
        flipped = MeanPoolHead(clinical=False, seed=1).fit(bags, 1 - y)
    assert twin.coef_ is fused.coef_  # shared, not refitted
    assert other.coef_ is not fused.coef_ and flipped.coef_ is not fused.coef_
    np.testing.assert_array_equal(twin.decision_function(bags), ref)
    # outside the block nothing is shared
    again = MeanPoolHead(clinical=False, seed=1).fit(bags, y)
    assert again.coef_ is not twin.coef_


def _task(head: str, r: int, f: int, clinical: bool = True) -> FoldTask:
    return FoldTask(head, r, f, np.arange(3), np.arange(3, 5), 1000 * r + f, clinical, 3)


def test_fold_groups_put_an_ensemble_with_its_members_of_the_same_fold():
    tasks = [
        _task("meanpool", 0, 0), _task("meanpool", 0, 1), _task("abmil", 0, 0),
        _task("ensemble", 0, 0), _task("ensemble", 0, 1), _task("clinical", 0, 0),
    ]  # fmt: skip
    groups = fold_groups(tasks, {"ensemble": ("meanpool", "svm", "abmil")})
    assert sorted(i for g in groups for i in g) == list(range(len(tasks)))
    assert [0, 2, 3] in groups  # members first, then the ensemble of fold (0, 0)
    assert [1, 4] in groups and [5] in groups
    assert fold_groups(tasks, {}) == [[i] for i in range(len(tasks))]
