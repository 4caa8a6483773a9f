"""HDF5 export in the cellbag, CLAM, TRIDENT and STAMP layouts.

Each layout is read back by a small reader written from that tool's documented file layout
(not its code): CLAM's ``Generic_MIL_Dataset`` (``dataset.csv`` + ``pt_files/`` or
``h5_files/``), TRIDENT's patch-feature files (``features`` + ``coords`` with dataset
attributes), STAMP's clinical + slide tables and ``feats`` files. ``store import`` reads
every layout back to identical bags.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.store import EncoderNotReady, Store, export_h5
from cellbag.store.importer import import_features

LOCAL = "/home/someone/weights/enc.pth"
META = {
    "name": "fake",
    "model": "fake_net",
    "weights": LOCAL,
    "weights_file": LOCAL,
    "image_size": 224,
    "mean": [0.5, 0.5, 0.5],
    "versions": {"timm": "1.0"},
    "adapter": None,
    "adapter_path": None,
}


@pytest.fixture
def store(tmp_path: Path, store_cohort, fake_embeddings) -> Store:
    s = Store.create(tmp_path / "s.zarr", store_cohort, chunk_rows=4, block_rows=8)
    s.add_embeddings("fake-0001", fake_embeddings, META)
    return s


def _bags(s: Store) -> dict[str, np.ndarray]:
    return {p: s.bag(p, s.encoders()[0]) for p in s.patients()["patient_id"]}


# ---------------------------------------------------------------- readers from the docs
def clam_dataset(csv_path: Path, data_dir: Path, label_dict: dict, use_h5: bool) -> list:
    """CLAM's Generic_MIL_Dataset: rows of dataset.csv (case_id, slide_id, label), labels
    mapped through label_dict; item = (features, label) from pt_files/<slide_id>.pt, or
    (features, label, coords) from h5_files/<slide_id>.h5."""
    import torch

    df = pd.read_csv(csv_path)
    assert list(df.columns[:3]) == ["case_id", "slide_id", "label"]
    items = []
    for slide_id, label in zip(df["slide_id"], df["label"], strict=True):
        y = label_dict[label]
        if not use_h5:
            features = torch.load(data_dir / "pt_files" / f"{slide_id}.pt")
            items.append((slide_id, features, y))
        else:
            with h5py.File(data_dir / "h5_files" / f"{slide_id}.h5", "r") as f:
                features = torch.from_numpy(f["features"][:])
                coords = f["coords"][:]
            items.append((slide_id, features, y, coords))
    return items


def trident_read(path: Path) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """A TRIDENT patch-feature file: features (n, d), coords (n, 2), each with attributes."""
    with h5py.File(path, "r") as f:
        return f["features"][:], f["coords"][:], dict(f["features"].attrs), dict(f["coords"].attrs)


def stamp_patients(clini: Path, slide: Path, feature_dir: Path, target: str) -> dict:
    """STAMP's patient-level dataset: clini table (PATIENT, target) joined with the slide table
    (PATIENT, FILENAME); a patient's feats are the rows of its slides' files; patients
    without a ground truth are left out."""
    c = pd.read_csv(clini)[["PATIENT", target]].dropna()
    sl = pd.read_csv(slide)
    out = {}
    for pid, y in zip(c["PATIENT"], c[target], strict=True):
        files = sl.loc[sl["PATIENT"] == pid, "FILENAME"]
        feats, coords = [], []
        for name in files:
            with h5py.File(feature_dir / name, "r") as f:
                feats.append(f["feats"][:])
                coords.append(f["coords"][:])
        out[str(pid)] = (np.concatenate(feats), np.concatenate(coords), int(y))
    return out


# ---------------------------------------------------------------- layouts
def test_cellbag_layout_attributes_are_true_to_the_file(tmp_path: Path, store: Store) -> None:
    files = export_h5(store, None, tmp_path / "h5")  # the only encoder by default
    bags = _bags(store)
    assert [f.stem for f in files] == list(bags)
    assert not list((tmp_path / "h5").glob(".*"))  # no temporary file left
    pts = store.patients().set_index("patient_id")
    for f in files:
        pid = f.stem
        with h5py.File(f, "r") as h:
            x = h["features"][:]
            np.testing.assert_array_equal(x, bags[pid])
            assert h.attrs["dtype"] == str(x.dtype) == "float32"
            assert h.attrs["stored_dtype"] == "float16"
            assert h.attrs["n_cells"] == len(x) and h.attrs["dim"] == x.shape[1] == 12
            assert [c.decode() for c in h["cell_ids"][:]] == list(store.bag_cells(pid)["cell_id"])
            np.testing.assert_array_equal(h["coords"][:, 0], np.arange(len(x)))
            assert (h["coords"][:, 1] == 0).all() and "index" in h["coords"].attrs["meaning"]
            lab = pts.loc[pid, "label"]
            assert h.attrs["label"] == (-1 if pd.isna(lab) else lab)
            assert h.attrs["encoder_id"] == "fake-0001" and h.attrs["patient_id"] == pid
            np.testing.assert_allclose(h.attrs["mean"], [0.5, 0.5, 0.5])
            assert json.loads(h.attrs["versions"]) == {"timm": "1.0"}
            values = [str(v) for v in h.attrs.values()]
            assert "adapter" not in h.attrs and "null" not in values  # no None as a string
            assert not any("/home/someone" in v or store.path in v for v in values)
            assert h.attrs["weights"] == "file enc.pth"
    export_h5(store, "fake", tmp_path / "paths", with_paths=True)  # by name
    with h5py.File(tmp_path / "paths" / files[0].name, "r") as h:
        assert h.attrs["weights_file"] == LOCAL and h.attrs["store"] == store.path


def test_clam_layout_reads_as_generic_mil_dataset(tmp_path: Path, store: Store) -> None:
    out = tmp_path / "clam"
    export_h5(store, "fake-0001", out, layout="clam")
    bags = _bags(store)
    labels = store.patients().set_index("patient_id")["label"]
    known = [p for p in bags if pd.notna(labels[p])]
    for use_h5 in (False, True):
        items = clam_dataset(out / "dataset.csv", out, {0: 0, 1: 1}, use_h5)
        assert [it[0] for it in items] == known
        for it in items:
            np.testing.assert_array_equal(it[1].numpy(), bags[it[0]])
            assert it[2] == labels[it[0]]
            if use_h5:
                assert it[3].shape == (len(bags[it[0]]), 2) and it[3].dtype == np.int64
    assert {p.stem for p in (out / "pt_files").glob("*.pt")} == set(bags)  # test patients too


def test_trident_layout_carries_attributes_on_its_datasets(tmp_path: Path, store: Store) -> None:
    export_h5(store, "fake-0001", tmp_path / "t", layout="trident")
    for pid, x in _bags(store).items():
        feats, coords, fa, ca = trident_read(tmp_path / "t" / f"{pid}.h5")
        np.testing.assert_array_equal(feats, x)
        assert coords.shape == (len(x), 2)
        assert fa["name"] == ca["name"] == pid and fa["encoder"] == "fake"
        assert ca["patch_size"] == 224 and "savetodir" not in fa


def test_stamp_layout_reads_with_its_tables(tmp_path: Path, store: Store) -> None:
    out = tmp_path / "stamp"
    export_h5(store, "fake-0001", out, layout="stamp")
    pats = stamp_patients(out / "clini.csv", out / "slide.csv", out, "label")
    bags = _bags(store)
    labels = store.patients().set_index("patient_id")["label"]
    assert sorted(pats) == sorted(p for p in bags if pd.notna(labels[p]))
    for pid, (feats, coords, y) in pats.items():
        np.testing.assert_array_equal(feats, bags[pid])
        assert coords.shape == (len(feats), 2) and y == labels[pid]
    with h5py.File(out / f"{pid}.h5", "r") as h:
        assert h.attrs["extractor"] == "fake-0001" and h.attrs["unit"] == "index"
    clini = pd.read_csv(out / "clini.csv")
    assert {"PATIENT", "label", "split", "gender", "dob", "lymph_count"} <= set(clini.columns)


@pytest.mark.parametrize(
    ("layout", "source", "labels"),
    [
        ("cellbag", ".", "labels.csv"),
        ("clam", ".", "dataset.csv"),
        ("trident", ".", "labels.csv"),
        ("stamp", ".", "clini.csv"),
    ],
)
def test_every_layout_imports_back_to_identical_bags(
    tmp_path: Path, store: Store, layout: str, source: str, labels: str
) -> None:
    out = tmp_path / layout
    runner = CliRunner()
    res = runner.invoke(app, ["store", "export-h5", store.path, str(out), "--layout", layout])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "store",
            "import",
            str(out / source),
            str(tmp_path / "back.zarr"),
            "--labels",
            str(out / labels),
        ],
    )
    assert res.exit_code == 0, res.output
    back = Store.open(tmp_path / "back.zarr")
    want, got = _bags(store), _bags(back)
    assert list(got) == list(want)
    for pid in want:
        np.testing.assert_array_equal(got[pid], want[pid])
        assert list(back.bag_cells(pid)["cell_id"]) == list(store.bag_cells(pid)["cell_id"])
    a, b = store.patients(), back.patients()
    cols = ["patient_id", "label", "split"]
    if layout != "clam":  # dataset.csv carries labels only
        cols += ["gender", "dob", "lymph_count"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    again = import_features(out / source, tmp_path / "again.zarr", name="x")
    assert again.encoders()[0].split("-")[1] == back.encoders()[0].split("-")[1]  # same digest


def test_export_errors(tmp_path: Path, store: Store, store_cohort, fake_embeddings) -> None:
    with pytest.raises(
        EncoderNotReady, match=r"no embeddings for encoder 'nope'.*fake-0001 \(fake, dim 12\)"
    ):
        export_h5(store, "nope", tmp_path / "out")
    with pytest.raises(Exception, match="unknown layout 'clam2'"):
        export_h5(store, None, tmp_path / "out", layout="clam2")
    store.add_embeddings("fake-0002", fake_embeddings[:, :6], {"name": "fake"})
    with pytest.raises(EncoderNotReady, match="'fake' names several encoders"):
        export_h5(store, "fake", tmp_path / "out")
    with pytest.raises(EncoderNotReady, match=r"several encoders.*fake-0002 \(fake, dim 6\)"):
        export_h5(store, None, tmp_path / "out")
    res = CliRunner().invoke(app, ["store", "info", store.path])
    assert res.exit_code == 0 and "fake-0001" in res.output and "complete" in res.output
