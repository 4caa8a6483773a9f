"""Shared fixtures of the featurize tests: a small cohort with awkward images, a tiny
random encoder, and one clean reference run that resumed runs must equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellbag.data import Cohort, read_cohort
from cellbag.data.demo import make_demo_cohort

FEAT_KW = {"batch_size": 4, "block_rows": 8, "chunk_rows": 4, "workers": 1}
TINY = {"name": "tf_efficientnet_lite0", "weights": "none", "image_size": 48}


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscription makes CPU inference crawl
    yield
    torch.set_num_threads(before)


def add_awkward_images(root: Path) -> dict[str, str]:
    """Add a broken JPEG, grayscale, RGBA, 16-bit and odd-size images to two patients."""
    folders = sorted(p for p in (root / "trainset").iterdir() if p.is_dir())
    a, b = folders[0], folders[1]
    (a / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), "L").save(b / "zz_gray.png")
    rgba = rng.integers(0, 255, (30, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(b / "zz_rgba.png")
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(b / "zz_odd.jpg")
    Image.fromarray(rng.integers(0, 4000, (20, 20)).astype(np.uint16)).save(b / "zz_16bit.png")
    return {"broken": f"{a.name}/zz_broken.jpg", "gray": f"{b.name}/zz_gray.png"}


@pytest.fixture(scope="session")
def feat_cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    root = make_demo_cohort(
        tmp_path_factory.mktemp("feat-cohort") / "demo", patients=4, cells_per_patient=7, seed=2
    )
    add_awkward_images(root)
    return read_cohort(root)


@pytest.fixture(scope="session")
def feat_kw() -> dict:
    """Small blocks and batches, so a few dozen cells make several blocks."""
    return dict(FEAT_KW)


@pytest.fixture(scope="session")
def tiny_spec() -> dict:
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_encoder():
    from cellbag.featurize import create_encoder

    return create_encoder(TINY["name"], weights=TINY["weights"], image_size=TINY["image_size"])


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, feat_cohort, tiny_encoder):
    """One uninterrupted run into a fresh store."""
    from cellbag.featurize import run_featurize

    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    return run_featurize(feat_cohort, path, tiny_encoder, **FEAT_KW)
