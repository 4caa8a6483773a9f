"""Shared fixtures of the store tests: a small demo cohort and synthetic embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellbag.data import Cohort, read_cohort
from cellbag.data.demo import make_demo_cohort


@pytest.fixture(scope="session")
def store_cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    root = make_demo_cohort(
        tmp_path_factory.mktemp("store-cohort") / "demo", patients=5, cells_per_patient=7, seed=1
    )
    return read_cohort(root)


@pytest.fixture(scope="session")
def fake_embeddings(store_cohort: Cohort) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((store_cohort.n_cells, 12)).astype(np.float32)


def make_store(path: Path, cohort: Cohort, **kw):
    from cellbag.store import Store

    return Store.create(path, cohort, **kw)
