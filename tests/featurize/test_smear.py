"""``--crop auto`` / ``--stain auto``: the smear recipe where the images say it fits, the
whole image as read elsewhere (tight single-cell crops, grey scans)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cellbag.featurize import EncoderError, FeaturizeError, create_encoder, run_featurize
from cellbag.featurize.config import FeaturizeConfig, read_config
from cellbag.featurize.smear import (
    SMEAR_CROP,
    SMEAR_STAIN,
    SmearCheck,
    cell_extent,
    centred_cell,
    check_smear,
    resolve,
    sample_paths,
)


def _paths(cohort) -> list[str]:
    return cohort.cells["path"].astype(str).tolist()


def _write(tmp_path, name: str, images: list[np.ndarray]) -> list[str]:
    out = []
    for i, a in enumerate(images):
        p = tmp_path / f"{name}{i}.png"
        Image.fromarray(a).save(p)
        out.append(str(p))
    return out


def _tight(paths: list[str], tmp_path) -> list[str]:
    """The central 40% of each smear crop, upscaled back: the cell fills the image."""
    out = []
    for p in paths:
        try:
            im = Image.open(p).convert("RGB")
        except OSError:  # the fixture's broken images
            continue
        w, h = im.size
        s = int(0.4 * min(w, h))
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        out.append(np.asarray(im.crop(box).resize((w, h), Image.Resampling.BICUBIC)))
    return _write(tmp_path, "tight", out)


def _grey_digits(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Dark strokes on white, no colour: a scan that is not a stained smear."""
    out = []
    for _ in range(n):
        a = np.full((64, 64), 255, np.uint8)
        r = int(rng.integers(10, 20))
        yy, xx = np.ogrid[:64, :64]
        ring = np.abs(np.hypot(yy - 32, xx - 32) - r) < 3
        a[ring] = rng.integers(0, 60)
        out.append(np.stack([a] * 3, axis=-1))
    return out


def test_the_demo_smears_are_smear_crops(feat_cohort) -> None:
    check = check_smear(_paths(feat_cohort))
    assert check.is_smear and check.sampled > 0
    assert check.found >= 0.9 * check.sampled  # a lymphocyte at the centre of (nearly) every
    # readable crop (the fixture's broken images are not counted)
    assert f"crop {SMEAR_CROP:g}, stain {SMEAR_STAIN}" in check.text()


def test_a_centred_cell_is_found_and_measured() -> None:
    a = np.full((100, 100, 3), (230, 190, 200), np.uint8)  # pink background: red > blue
    yy, xx = np.ogrid[:100, :100]
    a[np.hypot(yy - 50, xx - 50) < 15] = (110, 60, 170)  # violet: blue > red
    cell = centred_cell(a)
    assert cell is not None and abs(cell_extent(cell) - 0.3) < 0.03
    off = np.full((100, 100, 3), (230, 190, 200), np.uint8)
    off[np.hypot(yy - 12, xx - 12) < 8] = (110, 60, 170)  # far from the centre
    assert centred_cell(off) is None
    assert centred_cell(np.full((100, 100, 3), 128, np.uint8)) is None  # grey: no cell


def test_tight_crops_and_grey_scans_keep_the_whole_image(feat_cohort, tmp_path) -> None:
    tight = check_smear(_tight(sample_paths(_paths(feat_cohort), 12), tmp_path))
    assert tight.found > 0 and not tight.is_smear and tight.fit < tight.found / 2
    grey = check_smear(_write(tmp_path, "g", _grey_digits(10, np.random.default_rng(0))))
    assert (grey.found, grey.is_smear) == (0, False)
    assert "whole image" in grey.text()
    assert resolve(
        "auto", "auto", _write(tmp_path, "h", _grey_digits(3, np.random.default_rng(1)))
    )[:2] == (1.0, "none")


def test_given_values_are_kept_and_only_auto_is_decided(feat_cohort) -> None:
    paths = _paths(feat_cohort)
    assert resolve(0.8, "none", paths) == (0.8, "none", None)  # nothing to look at
    crop, stain, check = resolve(1.0, "auto", paths)
    assert (crop, stain) == (1.0, SMEAR_STAIN) and check.is_smear
    crop, stain, _ = resolve("auto", "none", paths)
    assert (crop, stain) == (SMEAR_CROP, "none")
    assert resolve("0.6", "none", paths)[0] == 0.6


def test_the_sample_is_spread_and_fixed() -> None:
    paths = [f"p{i}" for i in range(1000)]
    s = sample_paths(paths, 48)
    assert len(s) == 48 and s[0] == "p0" and s[-1] == "p999" and s == sample_paths(paths, 48)
    assert sample_paths(paths[:5], 48) == paths[:5]


def test_unreadable_images_are_not_counted(tmp_path, feat_cohort) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    check = check_smear([str(bad), *_paths(feat_cohort)[:5]])
    assert check.sampled == 5 and check.is_smear
    assert not SmearCheck(0, 0, 0).is_smear  # nothing readable: nothing is decided for it


def test_featurize_defaults_to_the_recipe_on_smears(feat_cohort, tmp_path, feat_kw, tiny_spec):
    kw = dict(feat_kw, weights="none", image_size=tiny_spec["image_size"], device="cpu")
    r = run_featurize(feat_cohort, tmp_path / "s.zarr", tiny_spec["name"], **kw)
    want = create_encoder(
        tiny_spec["name"], weights="none", image_size=tiny_spec["image_size"],
        crop=SMEAR_CROP, stain=SMEAR_STAIN,
    )  # fmt: skip
    assert r.encoder_id == want.id and r.preprocessing.startswith("smear crops")
    info = r.store.encoder_info(r.encoder_id)
    assert (info["crop"], info["stain"]) == (SMEAR_CROP, SMEAR_STAIN)
    cfg = read_config(r.config_path)
    assert (cfg.crop, cfg.stain) == (SMEAR_CROP, SMEAR_STAIN)  # a replay needs no look
    # the whole image stays one flag away, with no look at the images
    whole = run_featurize(
        feat_cohort, tmp_path / "s.zarr", tiny_spec["name"], crop=1.0, stain="none", **kw
    )
    assert whole.encoder_id != r.encoder_id and whole.preprocessing is None


def test_a_crop_that_is_neither_auto_nor_a_number_is_one_line(feat_cohort, tmp_path) -> None:
    with pytest.raises(FeaturizeError, match="crop 'big': give auto or a fraction"):
        FeaturizeConfig(data=str(feat_cohort.root), store=str(tmp_path / "s.zarr"), crop="big")
    out = subprocess.run(
        [sys.executable, "-m", "cellbag", "featurize", str(feat_cohort.root),
         str(tmp_path / "s.zarr"), "--crop", "big"],
        capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "crop 'big'" in out.stderr
    assert not (tmp_path / "s.zarr").exists()
    with pytest.raises(EncoderError, match="crop 5.0 out of range"):  # a number, but no fraction
        run_featurize(feat_cohort, tmp_path / "s.zarr", "tf_efficientnet_lite0", crop=5.0)
    assert not (tmp_path / "s.zarr").exists()
