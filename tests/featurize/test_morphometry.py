"""Morphometry: named measurements per cell, stored like any encoder's embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from cellbag.data.demo import render_cell
from cellbag.featurize.morphometry import FEATURE_NAMES, batch_features, cell_features
from cellbag.featurize.registry import create_encoder, list_presets


def _cells(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(render_cell(kind, rng)) for _ in range(n)])


def _col(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, FEATURE_NAMES.index(name)]


def test_features_measure_the_centred_cell():
    x = batch_features(_cells("normal", 4))
    assert x.shape == (4, len(FEATURE_NAMES)) and x.dtype == np.float32
    assert (_col(x, "found") == 1).all()
    nucleus, cell = _col(x, "nucleus_area"), _col(x, "cell_area")
    assert (nucleus > 0).all() and (nucleus < cell).all()
    assert ((_col(x, "nc_ratio") > 0) & (_col(x, "nc_ratio") < 1)).all()
    # the demo's normal lymphocyte: nucleus radius 25-30 px, a rim of 6-11 px
    r = np.sqrt(nucleus / np.pi)
    assert ((r > 18) & (r < 36)).all(), r


def test_features_tell_large_activated_from_small_mature_cells():
    big = batch_features(_cells("activated", 6, seed=1))
    small = batch_features(_cells("small_mature", 6, seed=2))
    assert _col(big, "cell_area").min() > _col(small, "cell_area").max()
    assert _col(big, "cytoplasm_rim_width").mean() > _col(small, "cytoplasm_rim_width").mean()
    assert _col(big, "nc_ratio").mean() < _col(small, "nc_ratio").mean()


def test_an_empty_crop_gives_found_zero_not_an_error():
    blank = np.full((224, 224, 3), 235, np.uint8)
    x = cell_features(blank)
    assert x[FEATURE_NAMES.index("found")] == 0 and np.isfinite(x).all()


def test_morphometry_is_an_encoder_with_an_identity():
    assert "morphometry" in [p.name for p in list_presets()]
    enc = create_encoder("morphometry")
    assert enc.dim == len(FEATURE_NAMES) and enc.id.startswith("morphometry-")
    assert enc.metadata["feature_names"] == list(FEATURE_NAMES)
    px = _cells("normal", 2)
    np.testing.assert_array_equal(enc.forward_pixels(px).numpy(), batch_features(px))
    assert create_encoder("morphometry").id == enc.id  # the same numbers, the same id
    with pytest.raises(Exception, match="no weights"):
        create_encoder("morphometry", weights="hub")
