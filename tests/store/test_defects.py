"""Store defects of issue 32 (section 2): each one line, nothing lost."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.data import Cohort, read_cohort
from cellbag.store import Store, from_arrays
from cellbag.store.errors import FeatureImportError
from cellbag.store.importer import import_features
from cellbag.store.sync import compare, file_digest


def test_an_hdf5_declaring_more_than_memory_is_refused_before_reading(tmp_path: Path) -> None:
    src = tmp_path / "h5"
    src.mkdir()
    with h5py.File(src / "P1.h5", "w") as f:
        f.create_dataset("features", data=np.ones((3, 4), np.float32))
    with h5py.File(src / "P2.h5", "w") as f:  # chunked: the file stays tiny
        f.create_dataset("features", shape=(10**13, 1280), dtype="float32", chunks=(8, 1280))
    with pytest.raises(FeatureImportError, match=r"P2.h5: patient P2: .*10000000000000 x 1280"):
        import_features(src, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_from_arrays_reads_a_stores_own_patient_table(tmp_path: Path, store_cohort: Cohort) -> None:
    from cellbag.aggregate.bags import load_bags

    s = Store.create(tmp_path / "a.zarr", store_cohort)
    s.add_embeddings("e", np.ones((s.n_cells, 3), np.float32))
    data = load_bags(s.path, "e", split="all")
    assert data.patients["dob"].notna().any()  # a datetime column, e.g. 1942-02-26 00:00:00
    labels = s.patients()["label"].fillna(-1).astype(int).tolist()
    t = from_arrays(
        tmp_path / "b.zarr", data.bags, labels, data.patient_ids, clinical=data.patients
    )
    a, b = s.patients().set_index("patient_id"), t.patients().set_index("patient_id")
    assert (a["dob"] == b.loc[a.index, "dob"]).all()


def test_verify_full_hashes_every_image(tmp_path: Path, store_cohort: Cohort) -> None:
    root = tmp_path / "c"
    shutil.copytree(store_cohort.root, root)
    cohort = read_cohort(root)
    s = Store.create(tmp_path / "s.zarr", cohort)
    paths = cohort.cells["path"].tolist()
    sha = [file_digest(p) for p in paths]
    st = [os.stat(p) for p in paths]
    s.record_files(np.arange(len(paths)), sha, [x.st_size for x in st], [x.st_mtime_ns for x in st])
    victim = Path(paths[3])
    before = victim.stat()
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0xFF  # other pixels, same size
    victim.write_bytes(bytes(raw))
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime
    assert compare(s, cohort).in_sync  # the cheap check cannot see it, by design
    assert compare(s, cohort, full=True).changed == [cohort.cells["cell_id"].iloc[3]]
    runner = CliRunner()
    assert "--full" in runner.invoke(app, ["store", "verify", "--help"]).output
    res = runner.invoke(app, ["store", "verify", s.path, "--data", str(root), "--full"])
    # unwrapped: the console wraps at its width, and a long tmp path moves the breaks
    assert res.exit_code == 1 and "1changed" in re.sub(r"\s+", "", res.output)
    ok = runner.invoke(app, ["store", "verify", s.path, "--data", str(root)])
    assert ok.exit_code == 0 and "--full hashes every image" in ok.output
