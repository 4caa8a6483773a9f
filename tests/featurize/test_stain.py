"""``--stain reinhard``: each image's L*a*b* mean and std matched to a fixed reference,
after the crop and before the resize; part of the encoder id only when taken."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from cellbag.featurize import create_encoder
from cellbag.featurize.errors import EncoderError
from cellbag.featurize.gpu_decode import DeviceJpegLoader
from cellbag.featurize.images import (
    REINHARD_MEAN,
    REINHARD_STD,
    decode_file,
    prepare,
    reinhard,
)
from cellbag.featurize.registry import encoder_from_metadata


def _smear(cast=(0, 0, 0), seed: int = 0) -> np.ndarray:
    """A pink background with a violet disc in the middle, plus noise and a colour cast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    a = np.ones((48, 48, 3)) * (236, 204, 214)
    a[(yy - 24) ** 2 + (xx - 24) ** 2 < 14**2] = (120, 70, 160)
    a += rng.normal(0, 6, a.shape) + np.asarray(cast)
    return np.clip(a, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("cast", [(0, 0, 0), (-40, 10, 30), (25, -30, -20)])
def test_reinhard_moves_the_lab_mean_and_std_to_the_reference(cast):
    lab = rgb2lab(reinhard(_smear(cast))).reshape(-1, 3)
    np.testing.assert_allclose(lab.mean(0), REINHARD_MEAN, atol=1.0)
    np.testing.assert_allclose(lab.std(0), REINHARD_STD, rtol=0.06)


def _reinhard_skimage(rgb: np.ndarray) -> np.ndarray:
    """The transfer through scikit-image's float64 conversions (stain_version 1)."""
    from skimage.color import lab2rgb

    lab = rgb2lab(rgb).reshape(-1, 3)
    sd = np.where(lab.std(0) < 1e-6, 1.0, lab.std(0))
    out = (lab - lab.mean(0)) / sd * np.asarray(REINHARD_STD) + np.asarray(REINHARD_MEAN)
    out[:, 0] = np.clip(out[:, 0], 0.0, 100.0)
    out[:, 2] = np.minimum(out[:, 2], 200.0 * (out[:, 0] + 16.0) / 116.0)
    return np.clip(lab2rgb(out.reshape(rgb.shape)) * 255.0 + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinhard_in_float32_is_scikit_images_to_one_level(seed):
    rng = np.random.default_rng(seed)
    img = np.concatenate(
        [_smear(rng.integers(-40, 40, 3), seed), rng.integers(0, 256, (48, 48, 3))]
    )
    img = img.astype(np.uint8)  # a smear and every kind of colour, out-of-gamut ones included
    diff = np.abs(reinhard(img).astype(int) - _reinhard_skimage(img).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_reinhard_of_a_flat_image_is_the_reference_colour():
    out = reinhard(np.full((8, 8, 3), 90, np.uint8))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert (out == out[0, 0]).all()  # no division by a zero std
    np.testing.assert_allclose(rgb2lab(out).reshape(-1, 3)[0], REINHARD_MEAN, atol=1.0)


def test_prepare_normalises_after_the_crop_before_the_resize(tmp_path):
    img = Image.fromarray(_smear((-40, 10, 30)))
    px = prepare(img, 16, crop=0.5, stain="reinhard")
    centre = np.asarray(img)[12:36, 12:36]
    want = np.asarray(Image.fromarray(reinhard(centre)).resize((16, 16), Image.BICUBIC))
    np.testing.assert_array_equal(px, want)
    assert not np.array_equal(px, prepare(img, 16, crop=0.5))
    img.save(tmp_path / "s.png")
    np.testing.assert_array_equal(
        decode_file(tmp_path / "s.png", 16, "bicubic", 0.5, "reinhard").pixels, px
    )


@pytest.mark.parametrize("cast", [(0, 0, 0), (-40, 10, 30)])
def test_reinhard_on_a_tensor_matches_the_cpu_pixels(cast):
    import torch

    from cellbag.featurize.gpu_decode import reinhard_tensor

    rgb = _smear(cast, seed=3)
    want = reinhard(rgb).astype(int)
    got = reinhard_tensor(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    got = got.permute(1, 2, 0).numpy().astype(int)
    assert np.abs(got - want).max() <= 1
    assert np.mean(got == want) > 0.999


def test_the_device_decoder_crops_and_stains_a_jpeg_itself(tmp_path):
    big = np.asarray(Image.fromarray(_smear((-30, 20, 10))).resize((80, 64)))
    Image.fromarray(big).save(tmp_path / "s.jpg", quality=95)
    loader = DeviceJpegLoader(48, "bicubic", 1, "cpu", crop=0.57, stain="reinhard")
    try:
        got = loader.collect(loader.submit([str(tmp_path / "s.jpg")]))[0]
    finally:
        loader.close()
    assert loader.device_files == 1 and loader.fallback_files == 0
    want = decode_file(tmp_path / "s.jpg", 48, "bicubic", 0.57, "reinhard").pixels
    diff = np.abs(np.asarray(got.pixels).astype(int) - want.astype(int))
    # the device resize is within a grey level of PIL's, and so is its Reinhard
    assert diff.max() <= 2 and diff.mean() < 0.3


def test_the_device_decoder_leaves_a_crop_to_pil_without_a_torch_resize(tmp_path):
    Image.fromarray(_smear()).save(tmp_path / "s.jpg", quality=95)
    loader = DeviceJpegLoader(48, "lanczos", 1, "cpu", crop=0.57, stain="reinhard")
    try:
        got = loader.collect(loader.submit([str(tmp_path / "s.jpg")]))[0]
    finally:
        loader.close()
    assert loader.device_files == 0
    want = decode_file(tmp_path / "s.jpg", 48, "lanczos", 0.57, "reinhard").pixels
    np.testing.assert_array_equal(np.asarray(got.pixels), want)


def test_stain_is_part_of_the_encoder_identity_only_when_taken(tiny_spec):
    name = tiny_spec["name"]
    plain = create_encoder(name, weights="none", image_size=48)
    assert "stain" not in plain.metadata["identity"]  # ids without it stay as they were
    assert create_encoder(name, weights="none", image_size=48, stain="none").id == plain.id
    stained = create_encoder(name, weights="none", image_size=48, stain="reinhard")
    assert stained.id != plain.id and stained.stain == "reinhard"
    assert stained.metadata["stain"] == "reinhard"
    assert "reinhard" in stained.metadata["preprocessing"]
    assert encoder_from_metadata(stained.metadata).id == stained.id
    both = create_encoder(name, weights="none", image_size=48, crop=0.57, stain="reinhard")
    assert both.id not in (
        stained.id,
        create_encoder(name, weights="none", image_size=48, crop=0.57).id,
    )


def test_a_bad_stain_is_one_line_naming_the_option(
    tiny_spec, feat_cohort, tmp_path, monkeypatch, capsys
):
    with pytest.raises(EncoderError, match="--stain 'macenko' unknown"):
        create_encoder(tiny_spec["name"], weights="none", image_size=48, stain="macenko")
    from cellbag.cli import main

    args = ["cellbag", "featurize", str(feat_cohort.root), str(tmp_path / "s.zarr")]
    monkeypatch.setattr(sys, "argv", [*args, "-e", tiny_spec["name"], "-w", "none", "--stain", "x"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert "--stain" in err and "\n" not in err, err
    assert not (tmp_path / "s.zarr").exists()  # refused before anything is written
