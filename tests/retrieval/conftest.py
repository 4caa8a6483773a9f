"""Shared fixtures: a small demo cohort, stores with synthetic and with real embeddings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cellbag.data import read_cohort
from cellbag.data.demo import make_demo_cohort
from cellbag.store import Store

FAKE = "fake-encoder"
DIM = 16


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    root = make_demo_cohort(
        tmp_path_factory.mktemp("demo"), patients=8, cells_per_patient=6, seed=0
    )
    return read_cohort(root)


def fake_embeddings(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def fake_store(cohort, tmp_path) -> Store:
    """A store of the demo cohort holding random 16-d embeddings (fresh for each test)."""
    store = Store.create(tmp_path / "fake.zarr", cohort)
    store.add_embeddings(FAKE, fake_embeddings(cohort.n_cells), {"name": FAKE})
    return store


@pytest.fixture(scope="session")
def real_store_path(cohort, tmp_path_factory) -> Path:
    """The demo cohort featurized by a small real encoder (random init, seeded, 64 px)."""
    import torch

    from cellbag.featurize import create_encoder, featurize

    torch.set_num_threads(2)
    enc = create_encoder("tf_efficientnet_lite0", weights="none", image_size=64)
    path = tmp_path_factory.mktemp("real") / "real.zarr"
    featurize(cohort, path, enc, batch_size=32, device="cpu", workers=1)
    return path


@pytest.fixture
def real_store(real_store_path, tmp_path) -> Store:
    """A private copy of the real store (tests may rewrite it)."""
    copy = tmp_path / "real.zarr"
    shutil.copytree(real_store_path, copy)
    return Store.open(copy, mode="r+")
