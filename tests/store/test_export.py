"""HDF5 export: one file per patient that reads back as the store's bags."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.store import EncoderNotReady, Store, export_h5


def test_export_reads_back(tmp_path: Path, store_cohort, fake_embeddings) -> None:
    s = Store.create(tmp_path / "s.zarr", store_cohort, chunk_rows=4, block_rows=8)
    s.add_embeddings(
        "fake-0001",
        fake_embeddings,
        {"name": "fake", "mean": [0.5, 0.5, 0.5], "versions": {"timm": "1.0"}, "adapter": None},
    )
    files = export_h5(s, "fake-0001", tmp_path / "h5")
    pids = list(s.patients()["patient_id"])
    assert [f.name for f in files] == [f"{p}.h5" for p in pids]
    assert not list((tmp_path / "h5").glob(".*"))  # no temporary file left
    for pid, f in zip(pids, files, strict=True):
        with h5py.File(f, "r") as h:
            feats = h["features"][:]
            assert feats.dtype == np.float32
            np.testing.assert_array_equal(feats, s.bag(pid, "fake-0001"))
            ids = [x.decode() for x in h["cell_ids"][:]]
            assert ids == list(s.bag_cells(pid)["cell_id"])
            assert h.attrs["encoder_id"] == "fake-0001" and h.attrs["dim"] == 12
            assert h.attrs["patient_id"] == pid
            np.testing.assert_allclose(h.attrs["mean"], [0.5, 0.5, 0.5])
            assert json.loads(h.attrs["versions"]) == {"timm": "1.0"}
            assert h.attrs["adapter"] == "null"


def test_export_cli_and_errors(tmp_path: Path, store_cohort, fake_embeddings) -> None:
    s = Store.create(tmp_path / "s.zarr", store_cohort)
    s.add_embeddings("fake-0001", fake_embeddings)
    runner = CliRunner()
    res = runner.invoke(
        app, ["store", "export-h5", s.path, str(tmp_path / "out"), "--encoder", "fake-0001"]
    )
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out").glob("*.h5"))) == len(s.patients())
    res = runner.invoke(app, ["store", "info", s.path])
    assert res.exit_code == 0 and "fake-0001" in res.output and "complete" in res.output
    with pytest.raises(EncoderNotReady, match="cellbag featurize"):
        export_h5(s, "nope-1234", tmp_path / "out2")
