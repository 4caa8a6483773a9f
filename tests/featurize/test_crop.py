"""``--crop``: the centred square of each image, cut before the resize, part of the id."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cellbag.featurize import create_encoder, run_featurize
from cellbag.featurize.errors import EncoderError
from cellbag.featurize.images import centre_box, decode_file, prepare
from cellbag.featurize.registry import SMEAR_CROP, encoder_from_metadata


def _target(w: int = 40, h: int = 30) -> Image.Image:
    """Red everywhere but a blue centred square of side 10."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 255
    a[h // 2 - 5 : h // 2 + 5, w // 2 - 5 : w // 2 + 5] = (0, 0, 255)
    return Image.fromarray(a)


def test_prepare_keeps_the_centred_square_of_the_shorter_side(tmp_path):
    assert centre_box(40, 30, 1 / 3) == (15, 10, 25, 20)
    px = prepare(_target(), 8, "nearest", crop=1 / 3)
    assert px.shape == (8, 8, 3) and (px[..., 2] == 255).all()  # only the blue square left
    whole = prepare(_target(), 8, "nearest")
    assert (whole[..., 0] == 255).any()  # without a crop the red smear stays
    _target().save(tmp_path / "t.png")
    np.testing.assert_array_equal(decode_file(tmp_path / "t.png", 8, "nearest", 1 / 3).pixels, px)


def test_crop_is_part_of_the_encoder_identity(tiny_spec):
    TINY = tiny_spec
    whole = create_encoder(TINY["name"], weights="none", image_size=48)
    assert "crop" not in whole.metadata["identity"]  # whole-image ids stay as they were
    same = create_encoder(TINY["name"], weights="none", image_size=48, crop=1.0)
    cropped = create_encoder(TINY["name"], weights="none", image_size=48, crop=SMEAR_CROP)
    assert same.id == whole.id and cropped.id != whole.id
    assert cropped.metadata["crop"] == pytest.approx(SMEAR_CROP)
    assert "centre crop" in cropped.metadata["preprocessing"]
    assert encoder_from_metadata(cropped.metadata).id == cropped.id
    with pytest.raises(EncoderError, match="crop"):
        create_encoder(TINY["name"], weights="none", image_size=48, crop=0.05)


def test_featurize_with_a_crop_stores_the_cropped_cells(feat_cohort, tmp_path, feat_kw, tiny_spec):
    TINY = tiny_spec
    path = tmp_path / "crop.zarr"
    kw = dict(feat_kw, weights="none", image_size=TINY["image_size"])
    kw.update(stain="none")
    whole = run_featurize(feat_cohort, path, TINY["name"], crop=1.0, **kw)
    crop = run_featurize(feat_cohort, path, TINY["name"], crop=0.5, **kw)
    store = crop.store
    assert crop.encoder_id != whole.encoder_id and store.is_complete(crop.encoder_id)
    pid = store.patients()["patient_id"][1]
    paths = store.bag_cells(pid)["path"]
    enc = create_encoder(TINY["name"], weights="none", image_size=48, crop=0.5)
    want = enc.embed([Image.open(p) for p in paths])
    got = store.bag(pid, crop.encoder_id)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    assert not np.allclose(got, store.bag(pid, whole.encoder_id), atol=1e-2)
