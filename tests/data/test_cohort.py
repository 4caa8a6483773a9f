"""Cohort readers on small hand-made cohorts covering every quirk and bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cellbag.data import CohortError, read_challenge, read_cohort, read_manifest

HEADER = "ID,LABEL,GENDER,DOB,LYMPH_COUNT\n"


def _img(path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8)).save(path)


def _challenge(root: Path, train_rows: str, test_rows: str | None = None, images=None) -> Path:
    (root / "trainset").mkdir(parents=True, exist_ok=True)
    (root / "trainset" / "trainset_true.csv").write_text(HEADER + train_rows)
    if test_rows is not None:
        (root / "testset").mkdir(parents=True, exist_ok=True)
        (root / "testset" / "testset_data.csv").write_text(test_rows)
    for rel in images or []:
        _img(root / rel)
    return root


def test_challenge_quirks(tmp_path: Path) -> None:
    root = _challenge(
        tmp_path,
        "P10,1,M,1/2/1950,12.5\nP2,0,f,25-12-1960,4\n",
        "ID,GENDER,DOB,LYMPH_COUNT\nP7,m,3/4/1970,6\n",  # no LABEL column in the test CSV
        [
            "trainset/P10/b.JPG",
            "trainset/P10/a.jpeg",
            "trainset/P10/.hidden.jpg",
            "trainset/P2/x10.png",
            "trainset/P2/x2.TIF",
            "testset/P7/c.jpg",
        ],
    )
    (root / "trainset" / "P10" / "notes.txt").write_text("not an image")  # not an image suffix
    c = read_challenge(root)
    assert list(c.patients["patient_id"]) == ["P2", "P10", "P7"]  # natural order, train first
    assert list(c.patients["split"]) == ["train", "train", "test"]
    assert c.patients["label"].tolist()[:2] == [0, 1]
    assert pd.isna(c.patients["label"].iloc[2])
    assert c.patients["gender"].tolist() == ["F", "M", "M"]
    p10 = c.patients.set_index("patient_id").loc["P10"]
    assert p10["dob"] == pd.Timestamp("1950-01-02")  # M/D/YYYY
    assert c.patients.set_index("patient_id").loc["P2", "dob"] == pd.Timestamp(
        "1960-12-25"
    )  # D-M-YYYY
    assert c.cells["cell_id"].tolist() == [
        "P2/x2.TIF",
        "P2/x10.png",
        "P10/a.jpeg",
        "P10/b.JPG",
        "P7/c.jpg",
    ]
    assert c.offsets().tolist() == [0, 2, 4, 5]
    assert c.problems == ()
    assert read_challenge(root).fingerprint() == c.fingerprint()


def test_test_labels_are_never_read(tmp_path: Path) -> None:
    root = _challenge(
        tmp_path,
        "P1,1,M,1/2/1950,12\n",
        HEADER + "P2,1,F,1/2/1950,3\n",
        ["trainset/P1/a.jpg", "testset/P2/a.jpg"],
    )
    c = read_challenge(root)
    assert pd.isna(c.patients.set_index("patient_id").loc["P2", "label"])


@pytest.mark.parametrize("test_csv", [None, "empty"])
def test_cohort_without_test_split(tmp_path: Path, test_csv) -> None:
    root = _challenge(
        tmp_path, "P1,1,M,1/2/1950,12\n", HEADER if test_csv else None, ["trainset/P1/a.jpg"]
    )
    c = read_challenge(root)
    assert c.n_patients == 1 and (c.patients["split"] == "train").all()


def test_missing_csv(tmp_path: Path) -> None:
    (tmp_path / "trainset").mkdir()
    with pytest.raises(CohortError, match="trainset_true.csv"):
        read_challenge(tmp_path)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="nope"):
        read_cohort(tmp_path / "nope")


def test_missing_test_csv_with_folders(tmp_path: Path) -> None:
    root = _challenge(
        tmp_path, "P1,1,M,1/2/1950,12\n", None, ["trainset/P1/a.jpg", "testset/P9/a.jpg"]
    )
    with pytest.raises(CohortError, match="testset_data.csv"):
        read_challenge(root)


def test_patient_without_folder_or_images_is_skipped_with_warning(tmp_path: Path) -> None:
    root = _challenge(
        tmp_path,
        "P1,1,M,1/2/1950,12\nP2,0,F,1/2/1950,3\nP3,0,F,1/2/1950,3\n",
        None,
        ["trainset/P1/a.jpg", "trainset/P4/a.jpg"],
    )
    (root / "trainset" / "P3").mkdir()
    with pytest.warns(UserWarning, match="P2"):
        c = read_challenge(root)
    kinds = {(p.kind, p.patient_id) for p in c.problems}
    assert kinds == {("no-folder", "P2"), ("empty-folder", "P3"), ("no-csv-row", "P4")}
    assert c.patients["patient_id"].tolist() == ["P1"]
    assert all(str(root) in p.file for p in c.problems)


def test_duplicated_id(tmp_path: Path) -> None:
    root = _challenge(
        tmp_path, "P1,1,M,1/2/1950,12\nP1,0,F,1/2/1950,3\n", None, ["trainset/P1/a.jpg"]
    )
    with pytest.raises(CohortError, match=r"trainset_true.csv: patient P1: duplicated ID"):
        read_challenge(root)


def test_duplicated_id_across_splits(tmp_path: Path) -> None:
    root = _challenge(
        tmp_path,
        "P1,1,M,1/2/1950,12\n",
        HEADER + "P1,-1,M,1/2/1950,12\n",
        ["trainset/P1/a.jpg", "testset/P1/a.jpg"],
    )
    with pytest.raises(CohortError, match="P1: duplicated ID"):
        read_challenge(root)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("P1,1,M,31/31/1950,12", r"patient P1: unparseable DOB '31/31/1950'"),
        ("P1,1,M,yesterday,12", r"patient P1: unparseable DOB"),
        ("P1,1,X,1/2/1950,12", r"patient P1: unknown GENDER 'X'"),
        ("P1,1,M,1/2/1950,lots", r"patient P1: non-numeric LYMPH_COUNT 'lots'"),
        ("P1,7,M,1/2/1950,12", r"patient P1: invalid LABEL '7'"),
    ],
)
def test_bad_values_name_file_and_patient(tmp_path: Path, row: str, match: str) -> None:
    root = _challenge(tmp_path, row + "\n", None, ["trainset/P1/a.jpg"])
    with pytest.raises(CohortError, match=match) as e:
        read_challenge(root)
    assert "trainset_true.csv" in str(e.value) and "\n" not in str(e.value)


def test_empty_values_are_unknown(tmp_path: Path) -> None:
    root = _challenge(tmp_path, "P1,1,,,\n", None, ["trainset/P1/a.jpg"])
    p = read_challenge(root).patients.iloc[0]
    assert p["gender"] is None and pd.isna(p["dob"]) and pd.isna(p["lymph_count"])


def test_manifest_layout(tmp_path: Path) -> None:
    for rel in ["imgs/a/1.png", "imgs/a/2.png", "imgs/b/1.jpg", "imgs/c/1.jpg"]:
        _img(tmp_path / rel)
    (tmp_path / "manifest.csv").write_text(
        "patient_id,image_path,split\nB,imgs/b/1.jpg,test\nA,imgs/a/2.png,\nA,imgs/a/1.png,train\n"
        "C,imgs/c/1.jpg,train\nC,imgs/c/missing.jpg,train\n"
    )
    (tmp_path / "clinical.csv").write_text(
        "patient_id,label,gender,dob,lymph_count\nA,1,F,1/2/1950,10\nB,1,M,1/2/1950,3\nZ,0,M,1/2/1950,3\n"
    )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        c = read_cohort(tmp_path / "manifest.csv")
    assert c.layout == "manifest"
    assert c.patients["patient_id"].tolist() == ["A", "C", "B"]
    assert c.patients["label"].tolist()[0] == 1
    assert pd.isna(c.patients["label"].iloc[2])  # test split: never read
    assert c.cells["cell_id"].tolist() == ["A/1.png", "A/2.png", "C/1.jpg", "B/1.jpg"]
    kinds = {(p.kind, p.patient_id) for p in c.problems}
    assert (
        ("missing-image", "C") in kinds
        and ("no-clinical-row", "C") in kinds
        and ("no-images", "Z") in kinds
    )
    # folder form
    assert read_cohort(tmp_path).fingerprint() == c.fingerprint()


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="missing manifest"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("patient_id,path\nA,x.png\n")
    with pytest.raises(CohortError, match="image_path"):
        read_manifest(tmp_path / "m.csv")
    _img(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("patient_id,image_path,split\nA,x.png,train\nA,x.png,test\n")
    with pytest.raises(CohortError, match="patient A: cells in both"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("patient_id,image_path,split\nA,x.png,valid\n")
    with pytest.raises(CohortError, match="unknown split"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("patient_id,image_path\nA,x.png\n")
    with pytest.raises(CohortError, match="missing clinical CSV"):
        read_manifest(tmp_path / "m.csv", tmp_path / "nope.csv")
