"""`store import` / `from_arrays`: features made elsewhere come in, bad input stops in one line."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.data import ClinicalScaler
from cellbag.store import Store, from_arrays
from cellbag.store.errors import FeatureImportError
from cellbag.store.importer import import_features
from cellbag.store.resolve import resolve_encoder

runner = CliRunner()


def _bags(n_patients: int = 6, dim: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((3 + i % 4, dim)).astype(np.float16).astype(np.float32)
        for i in range(n_patients)
    ]


def _write_h5(folder: Path, bags: list[np.ndarray], key: str = "features", coords: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(bags):
        with h5py.File(folder / f"P{i}.h5", "w") as f:
            f.create_dataset(key, data=x)
            if coords:
                f.create_dataset(
                    "coords",
                    data=np.stack([np.arange(len(x)) * 224, np.zeros(len(x))], 1).astype(np.int64),
                )


def _labels(path: Path, n: int, **extra) -> Path:
    df = pd.DataFrame(
        {"patient_id": [f"P{i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    )
    for k, v in extra.items():
        df[k] = v
    df.to_csv(path, index=False)
    return path


def _invoke(*args: str):
    res = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output
    return res


def _main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the console script's entry point (known errors become one line) and its output."""
    from cellbag.cli import main

    monkeypatch.setattr(sys, "argv", ["cellbag", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    io = capsys.readouterr()
    out = io.out + io.err
    assert "Traceback" not in out
    return code, out


def test_h5_folder_import_keeps_bags_labels_coords_and_clinical(tmp_path: Path) -> None:
    bags = _bags()
    _write_h5(tmp_path / "feats", bags)
    lab = _labels(
        tmp_path / "labels.csv",
        6,
        age=[40, 50, 60, 70, 80, 90],
        GENDER=["m", "F", "M", "f", "", "M"],
        stage=["I", "II", "I", "III", "II", None],
    )
    res = _invoke(
        "store", "import", tmp_path / "feats", tmp_path / "s.zarr", "--labels", lab, "--name", "uni"
    )
    assert res.exit_code == 0, res.output
    s = Store.open(tmp_path / "s.zarr")
    (eid,) = s.encoders()
    assert eid.startswith("uni-") and resolve_encoder(s, "uni") == eid
    for verb in ("info", "verify"):  # no image cohort to compare with: not an error
        res = _invoke("store", verb, s.path)
        assert res.exit_code == 0, res.output
    pts = s.patients()
    assert list(pts["patient_id"]) == [f"P{i}" for i in range(6)]
    assert list(pts["label"]) == [0, 1, 0, 1, 0, 1]
    assert list(pts["split"]) == ["train"] * 6
    assert list(pts["gender"]) == ["M", "F", "M", "F", None, "M"]
    assert list(pts["age"]) == [40, 50, 60, 70, 80, 90]
    assert pts["stage=III"].tolist()[:5] == [0, 0, 0, 1, 0] and np.isnan(pts["stage=III"].iloc[5])
    for i, x in enumerate(bags):
        np.testing.assert_array_equal(s.bag(f"P{i}", eid), x)
        assert list(s.bag_cells(f"P{i}")["cell_id"]) == [f"P{i}/{j}" for j in range(len(x))]
    coords = s.zarr_group["cells/coords"][:]
    assert coords.shape == (s.n_cells, 2) and coords[1, 0] == 224
    # the clinical columns reach the scaler: each one a feature, scaled on the rows it is fitted on
    sc = ClinicalScaler().fit(pts.iloc[:3])
    assert sc.feature_names_[-3:] == ["stage=I", "stage=II", "stage=III"]
    z = sc.transform(pts)
    j = sc.feature_names_.index("age")  # the age column stands in for a date of birth
    np.testing.assert_allclose(z[:3, j].mean(), 0, atol=1e-6)
    assert z[5, j] > 3  # age 90 scaled by the first three patients (40-60), not by all six


def test_stamp_feats_and_table_import_give_identical_bags(tmp_path: Path) -> None:
    bags = _bags(dim=4, seed=1)
    _write_h5(tmp_path / "stamp", bags, key="feats", coords=False)
    a = import_features(
        tmp_path / "stamp", tmp_path / "a.zarr", labels=_labels(tmp_path / "l.csv", 6)
    )
    assert a.attrs["cohort"]["layout"] == "import:stamp"
    rows = [
        {"patient_id": f"P{i}", "label": i % 2, **{f"f{k}": v for k, v in enumerate(r)}}
        for i, x in enumerate(bags)
        for r in x
    ]
    table = pd.DataFrame(rows)
    table = table[["patient_id", "label", "f2", "f0", "f3", "f1"]]  # column order must not matter
    table.to_parquet(tmp_path / "t.parquet")
    b = import_features(tmp_path / "t.parquet", tmp_path / "b.zarr")
    (ea,), (eb,) = a.encoders(), b.encoders()
    assert ea == eb  # same name, same feature bytes: same encoder id
    table.rename(columns=lambda c: c.replace("f", "x")).to_csv(tmp_path / "t.csv")  # + index
    c = import_features(tmp_path / "t.csv", tmp_path / "c.zarr")  # every numeric column
    assert c.encoder_info(c.encoders()[0])["dim"] == 4  # not the row index
    np.testing.assert_array_equal(c.bag("P1", c.encoders()[0]), bags[1][:, [2, 0, 3, 1]])
    assert list(b.patients()["label"]) == [i % 2 for i in range(6)]
    for i in range(6):
        np.testing.assert_array_equal(a.bag(f"P{i}", ea), b.bag(f"P{i}", eb))


def test_from_arrays_store_runs_cv_with_its_clinical_columns(tmp_path: Path) -> None:
    from cellbag.evaluate.cv import run_cv

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 12)
    bags = [rng.standard_normal((6, 4)).astype(np.float32) for _ in y]  # images: no signal
    clin = pd.DataFrame({"marker": y * 3.0 + rng.standard_normal(len(y))})  # clinical: signal
    pids = [f"P{i}" for i in range(len(y))]
    from_arrays(tmp_path / "s.zarr", bags, y, pids, clinical=clin, name="arr")
    kw = dict(heads="meanpool", folds=3, repeats=1, quiet=True)
    with_c = run_cv(tmp_path / "s.zarr", "arr", out=tmp_path / "c", **kw)
    without = run_cv(tmp_path / "s.zarr", "arr", out=tmp_path / "n", clinical=False, **kw)
    assert with_c["roc_auc"].iloc[0] > 0.9
    assert without["roc_auc"].iloc[0] < 0.8


def test_imported_store_fit_predict_and_retrieval_without_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    y = np.array([0, 1] * 8)
    bags = [(rng.standard_normal((5, 8)) + yy).astype(np.float32) for yy in y]
    labels = list(y[:14]) + [None, None]
    from_arrays(tmp_path / "s.zarr", bags, labels, name="arr")
    s = str(tmp_path / "s.zarr")
    fit = ("fit", s, "--head", "meanpool", "--out", tmp_path / "m", "--no-clinical")
    res = _invoke(*fit, "--encoder", "arr")  # the encoder's name stands for its id
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m" / "model.json").read_text())["encoder_id"].startswith("arr-")
    assert "NEW_STORE" not in res.output  # the store has test patients: predict on them
    res = _invoke("predict", tmp_path / "m", s, "--out", tmp_path / "sub.csv")
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "sub.csv")) == 2
    # no images to distil from: the next step offered is the report, and distill refuses
    assert "cellbag report" in res.output and "cellbag distill" not in res.output
    res = _invoke("distill", s, tmp_path, "--teacher", tmp_path / "m", "--out", tmp_path / "st")
    assert res.exit_code == 2  # `fail`: one line, exit code 2
    assert "imported features, no cell images" in res.output
    assert not (tmp_path / "st").exists()
    # every patient labelled (a benchmark's store): fit points predict at a new store
    from_arrays(tmp_path / "all.zarr", bags, list(y), name="arr")
    res = _invoke("fit", tmp_path / "all.zarr", "--head", "meanpool", "-o", tmp_path / "m2")
    assert res.exit_code == 0, res.output
    assert "NEW_STORE" in res.output
    res = _invoke(
        "neighbors",
        s,
        "--cell",
        "P0/0",
        "-k",
        "3",
        "--encoder",
        "arr",
        "--montage",
        tmp_path / "m.png",
    )
    assert res.exit_code == 0, res.output
    assert "P0/0" in res.output and "no images (imported features)" in res.output
    res = _invoke(
        "cv",
        s,
        "--head",
        "abmil",
        "--folds",
        "2",
        "--repeats",
        "1",
        "-o",
        tmp_path / "r",
        "--set",
        "epochs=3",
    )
    assert res.exit_code == 0, res.output
    res = _invoke("report", tmp_path / "r", "--store", s, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    page = (tmp_path / "rep" / "index.html").read_text()
    assert (
        "The cells have no images (imported features)" in page and "could not be read" not in page
    )


BAD = {
    "dims differ": lambda d: _write_h5(
        d, [np.ones((3, 4), np.float32), np.ones((3, 5), np.float32)]
    ),
    "NaN": lambda d: _write_h5(
        d, [np.ones((3, 4), np.float32), np.full((2, 4), np.nan, np.float32)]
    ),
    "empty": lambda d: _write_h5(d, [np.ones((3, 4), np.float32), np.ones((0, 4), np.float32)]),
    "inf": lambda d: _write_h5(
        d, [np.ones((3, 4), np.float32), np.full((2, 4), np.inf, np.float32)]
    ),
}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "dims differ",
            r"P1\.h5: patient P1: features have dim 5, but .*P0\.h5 \(patient P0\) has 4",
        ),
        ("NaN", r"P1\.h5: patient P1: NaN or inf"),
        ("inf", r"P1\.h5: patient P1: NaN or inf"),
        ("empty", r"P1\.h5: patient P1: no instances"),
    ],
)
def test_bad_features_stop_in_one_line_and_write_nothing(
    tmp_path: Path, monkeypatch, capsys, case: str, message: str
) -> None:
    BAD[case](tmp_path / "in")
    with pytest.raises(FeatureImportError, match=message):
        import_features(tmp_path / "in", tmp_path / "s.zarr")
    code, out = _main(monkeypatch, capsys, "store", "import", tmp_path / "in", tmp_path / "s.zarr")
    assert code == 2 and "patient P1" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"]  # no temporary store left behind


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("patient_id,label\nP0,0\nP1,1\nP0,1\n", r"labels\.csv: patient P0 is listed twice"),
        ("patient_id,label\nP0,0\nP7,1\n", r"labels\.csv: patient P7 has a label but no features"),
        ("patient_id,label\nP0,0\nP1,2\n", r"labels\.csv: patient P1: invalid LABEL"),
        ("patient_id,label\nP0,0\nP1,yes\n", r"labels\.csv: patient P1: invalid LABEL"),
        ("patient_id,label,split\nP0,0,train\nP1,1,val\n", r"patient P1: split 'val'"),
    ],
)
def test_bad_labels_name_file_and_patient(
    tmp_path: Path, monkeypatch, capsys, labels: str, message: str
) -> None:
    _write_h5(tmp_path / "in", _bags(2))
    (tmp_path / "labels.csv").write_text(labels)
    args = (
        "store",
        "import",
        tmp_path / "in",
        tmp_path / "s.zarr",
        "--labels",
        tmp_path / "labels.csv",
    )
    code, out = _main(monkeypatch, capsys, *args)
    assert code == 2 and re.search(message, out.replace("\n", "")), out
    assert not (tmp_path / "s.zarr").exists()


def test_bad_sources_and_targets(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureImportError, match="no .h5 files"):
        import_features(tmp_path / "empty", tmp_path / "s.zarr")
    _write_h5(tmp_path / "in", _bags(2))
    (tmp_path / "in" / "P1.hdf5").write_bytes((tmp_path / "in" / "P1.h5").read_bytes())
    with pytest.raises(FeatureImportError, match="patient P1 is duplicated"):
        import_features(tmp_path / "in", tmp_path / "s.zarr")
    (tmp_path / "in" / "P1.hdf5").unlink()
    (tmp_path / "in" / "P2.h5").write_text("not hdf5")
    with pytest.raises(FeatureImportError, match=r"P2\.h5: patient P2: not a readable HDF5"):
        import_features(tmp_path / "in", tmp_path / "s.zarr")
    (tmp_path / "in" / "P2.h5").unlink()
    (tmp_path / "t.csv").write_text("patient_id,f0,f1\nA,1,2\nA,1,nan\n")
    with pytest.raises(FeatureImportError, match=r"t\.csv: patient A: NaN"):
        import_features(tmp_path / "t.csv", tmp_path / "s.zarr")
    (tmp_path / "t.csv").write_text("patient_id,f0\nA,1e6\n")
    with pytest.raises(FeatureImportError, match=r"patient A: feature values beyond float16"):
        import_features(tmp_path / "t.csv", tmp_path / "s.zarr")
    (tmp_path / "t.csv").write_text("pid,f0\nA,1\n")
    with pytest.raises(FeatureImportError, match=r"t\.csv: no patient column"):
        import_features(tmp_path / "t.csv", tmp_path / "s.zarr")
    (tmp_path / "t.csv").write_text("patient_id,f0,label\nA,1,0\nA,2,1\n")
    with pytest.raises(FeatureImportError, match=r"patient A: its rows disagree on label"):
        import_features(tmp_path / "t.csv", tmp_path / "s.zarr")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FeatureImportError, match="not empty and not a cellbag store"):
        import_features(tmp_path / "in", mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    import_features(tmp_path / "in", tmp_path / "s.zarr")
    with pytest.raises(FeatureImportError, match="already exists"):
        import_features(tmp_path / "in", tmp_path / "s.zarr")
    import_features(tmp_path / "in", tmp_path / "s.zarr", name="again", force=True)
    assert Store.open(tmp_path / "s.zarr").encoders()[0].startswith("again-")


def test_store_describes_every_column_and_code(tmp_path: Path, store_cohort, fake_embeddings):
    import zarr

    made = Store.create(tmp_path / "made.zarr", store_cohort)
    made.add_embeddings("fake-0001", fake_embeddings)
    _write_h5(tmp_path / "in", _bags(4))
    _labels(tmp_path / "l.csv", 4, score=[1.0, 2.0, 3.0, 4.0])
    import_features(tmp_path / "in", tmp_path / "imp.zarr", labels=tmp_path / "l.csv")
    for path in (made.path, tmp_path / "imp.zarr"):
        g = zarr.open_group(str(path), mode="r")  # a plain zarr user, no cellbag
        for group in ("cells", "patients"):
            described = g[group].attrs["columns"]
            assert set(g[group].array_keys()) <= set(described), (path, group)
            for column, codes in g[group].attrs["codes"].items():
                assert column in described and codes
        schema = g.attrs["schema"]
        assert schema["patients"]["codes"]["label"] == {
            "0": "reactive",
            "1": "tumoral",
            "-1": "unknown (test patient)",
        }
        for eid in g["embeddings"].group_keys():
            assert set(g["embeddings"][eid].array_keys()) <= set(schema["embeddings/<encoder_id>"])
    g = zarr.open_group(str(tmp_path / "imp.zarr"), mode="r")
    assert {"coords", "cell_id"} <= set(g["cells"].array_keys())
    assert list(g["patients/clinical_extra"].attrs["columns"]) == ["score"]


def test_clinical_columns_survive_export_and_import(tmp_path: Path) -> None:
    from cellbag.store import export_h5

    _write_h5(tmp_path / "in", _bags(4))
    lab = _labels(tmp_path / "l.csv", 4, dob=["1950-01-02", "", "1960-03-04", "1970-05-06"])
    pd.read_csv(lab).assign(score=[0.5, None, 2.0, 3.5], arm=["a", "b", "a", None]).to_csv(
        lab
    )  # with its index
    a = import_features(tmp_path / "in", tmp_path / "a.zarr", labels=lab)
    export_h5(a, None, tmp_path / "out", layout="stamp")
    b = import_features(tmp_path / "out", tmp_path / "b.zarr", labels=tmp_path / "out/clini.csv")
    pa, pb = a.patients(), b.patients()
    assert {"score", "arm=a", "arm=b"} <= set(pa.columns)
    assert "Unnamed: 0" not in pa.columns  # the row index pandas wrote is not a feature
    pd.testing.assert_frame_equal(pa, pb)
    assert a.encoders() == b.encoders()
