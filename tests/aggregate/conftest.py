"""Shared fixtures: a small witness store and one cross-validation run over it."""

from __future__ import annotations

import pytest

from cellbag.aggregate.synthetic import witness_cohort, witness_store

# small, fast training for every test that cross-validates neural heads
FAST = {
    "abmil": {"epochs": 12, "inner_folds": 2},
    "transformer": {"epochs": 8, "inner_folds": 2},
    "lgbm": {"n_estimators": 40},
}


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fast():
    """Head parameters for quick cross-validation runs."""
    return FAST


@pytest.fixture(scope="session")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("agg") / "store.zarr"
    witness_store(str(path), n_train=48, n_test=10, cells=(20, 30), dim=16, seed=0)
    return path


@pytest.fixture(scope="session")
def cv_run(store_path, tmp_path_factory):
    from cellbag.evaluate import run_cv

    out = tmp_path_factory.mktemp("run") / "cv"
    table = run_cv(
        str(store_path),
        None,
        heads="meanpool,abmil,lgbm",
        out=out,
        folds=3,
        repeats=2,
        seed=0,
        head_params=FAST,
        threads=1,
        quiet=True,
        inner_folds=2,  # nested thresholds at the lowest cost
    )
    return out, table


@pytest.fixture(scope="session")
def witness():
    """Held-out witness data: train on 100 bags, test on 60."""
    return witness_cohort(160, 40, 32, witnesses=3, seed=0)
