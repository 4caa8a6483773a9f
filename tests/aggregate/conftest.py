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


def _check_saves_loads_and_explains(head, bags, bag, tmp_path):
    """``head`` saved and loaded decides the same; its occlusion of ``bag`` is the log-odds
    of the bag less each cell, recomputed exactly; its cell weights sum to 1. Returns the
    loaded head."""
    import numpy as np

    from cellbag.aggregate import Head

    again = Head.load(head.save(tmp_path / "h"))
    np.testing.assert_allclose(again.predict_proba(bags), head.predict_proba(bags), atol=1e-6)
    full = head.decision_function([bag])[0]
    loo = np.array([head.decision_function([np.delete(bag, i, 0)])[0] for i in range(len(bag))])
    np.testing.assert_allclose(head._occlusion([bag])[0], full - loo, atol=1e-5)
    w = head.cell_weights([bag])[0]
    assert w.shape == (len(bag),) and np.isclose(w.sum(), 1.0)
    return again


@pytest.fixture
def saves_loads_and_explains():
    """The check every head option that changes the module's state goes through."""
    return _check_saves_loads_and_explains
