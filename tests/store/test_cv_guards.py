"""Never stale, nothing half-written (issue 32, section 2): ``cv`` makes featurize's cheap
stat check and refuses a store whose images changed (``--allow-stale`` overrides), and
checks every head's clinical features before it fits any head."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.data import Cohort, read_cohort
from cellbag.store import Store
from cellbag.store.sync import file_digest, images_out_of_sync

CV = ["--head", "meanpool,lgbm", "--folds", "2", "--repeats", "1", "--inner-folds", "0", "-q"]


def _store(tmp_path: Path, root: Path) -> Store:
    """A store of ``root`` whose cells record what their files held (as featurize does)."""
    cohort = read_cohort(root)
    s = Store.create(tmp_path / "s.zarr", cohort)
    paths = cohort.cells["path"].tolist()
    st = [os.stat(p) for p in paths]
    s.record_files(
        np.arange(len(paths)),
        [file_digest(p) for p in paths],
        [x.st_size for x in st],
        [x.st_mtime_ns for x in st],
    )
    rng = np.random.default_rng(0)
    s.add_embeddings("e", rng.normal(size=(s.n_cells, 4)).astype(np.float32), {"name": "e"})
    return s


def _cv(store: Store, out: Path, *extra: str):
    return CliRunner().invoke(app, ["cv", store.path, *CV, "--out", str(out), *extra])


def test_cv_refuses_stale_embeddings_unless_allowed(tmp_path: Path, store_cohort: Cohort) -> None:
    root = tmp_path / "c"
    shutil.copytree(store_cohort.root, root)
    s = _store(tmp_path, root)
    assert images_out_of_sync(s) is None
    victim = Path(read_cohort(root).cells["path"].iloc[2])
    victim.write_bytes(victim.read_bytes() + b"\x00")  # other pixels, same name
    why = images_out_of_sync(s)
    assert why is not None and "1 image(s) changed" in why
    res = _cv(s, tmp_path / "run")
    assert isinstance(res.exception, Exception) and "stale" in str(res.exception)
    assert "--allow-stale" in str(res.exception) and "\n" not in str(res.exception)
    assert not (tmp_path / "run").exists()  # refused before writing anything
    ok = _cv(
        s, tmp_path / "run2", "--allow-stale", "--no-clinical", "--jobs", "1", "--head", "meanpool"
    )
    assert ok.exit_code == 0, ok.output


def test_a_copied_store_without_its_images_is_not_stale(
    tmp_path: Path, store_cohort: Cohort
) -> None:
    root = tmp_path / "c"
    shutil.copytree(store_cohort.root, root)
    s = _store(tmp_path, root)
    shutil.rmtree(root)  # the images are not here (another machine)
    assert images_out_of_sync(Store.open(s.path)) is None


def test_cv_checks_every_heads_clinical_features_before_any_fit(
    tmp_path: Path, store_cohort: Cohort
) -> None:
    root = tmp_path / "c"
    shutil.copytree(store_cohort.root, root)
    csv = root / "trainset" / "trainset_true.csv"
    lines = csv.read_text().splitlines()
    row = lines[1].split(",")
    row[lines[0].split(",").index("DOB")] = "1/1/2021"  # after the reference date (2020)
    csv.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    s = _store(tmp_path, root)
    out = tmp_path / "run"
    res = _cv(s, out)
    msg = str(res.exception)
    assert f"patient {row[0]}: DOB 2021-01-01 is after the reference date" in msg, res.output
    assert "\n" not in msg
    assert not (out / "meanpool").exists() and not (out / "lgbm").exists()  # none half-written


@pytest.fixture(autouse=True)
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
