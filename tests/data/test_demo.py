"""The demo cohort: deterministic, challenge layout, ground truth apart, learnable signal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.data import read_cohort
from cellbag.data.demo import make_demo_cohort


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_demo_is_deterministic_and_readable(tmp_path: Path) -> None:
    a = make_demo_cohort(tmp_path / "a", patients=10, cells_per_patient=4, seed=3)
    b = make_demo_cohort(tmp_path / "b", patients=10, cells_per_patient=4, seed=3)
    c = make_demo_cohort(tmp_path / "c", patients=10, cells_per_patient=4, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)
    cohort = read_cohort(a)
    assert cohort.problems == ()
    assert (cohort.patients["split"] == "test").sum() == 2
    assert cohort.split("train")["label"].notna().all()
    assert cohort.split("test")["label"].isna().all()
    test_csv = pd.read_csv(a / "testset" / "testset_data.csv")
    assert set(test_csv["LABEL"]) == {-1}  # ground truth stays out of the test CSV
    truth = pd.read_csv(a / "ground_truth.csv")
    assert len(truth) == cohort.n_cells and set(truth["cell_id"]) == set(cohort.cells["cell_id"])
    im = Image.open(cohort.cells["path"].iloc[0])
    assert im.size == (224, 224) and im.mode == "RGB" and im.format == "JPEG"


def test_demo_signal_is_class_dependent(tmp_path: Path) -> None:
    root = make_demo_cohort(tmp_path / "d", patients=30, cells_per_patient=20, seed=0)
    truth = pd.read_csv(root / "ground_truth.csv")
    per_patient = truth.groupby("patient_id").agg(
        label=("label", "first"), witness=("witness", "mean")
    )
    assert per_patient.loc[per_patient["label"] == 0, "witness"].max() == 0
    frac = per_patient.loc[per_patient["label"] == 1, "witness"]
    assert 0.05 < frac.mean() < 0.6  # only a fraction of a tumoral bag are witnesses
    cohort = read_cohort(root)
    p = cohort.patients.dropna(subset=["label"])
    assert (
        p.loc[p["label"] == 1, "lymph_count"].median()
        > p.loc[p["label"] == 0, "lymph_count"].median()
    )

    # small mature (witness) lymphocytes are darker at the centre than activated ones
    def centre(t: str) -> float:
        rows = truth[truth["cell_type"] == t].head(5)
        return float(
            np.mean(
                [np.asarray(Image.open(root / f))[100:124, 100:124].mean() for f in rows["file"]]
            )
        )

    assert centre("small_mature") < centre("activated")


def test_demo_data_cli_and_inspect(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "demo"
    r = runner.invoke(
        app,
        [
            "demo-data",
            str(out),
            "--patients",
            "10",
            "--cells-per-patient",
            "3",
            "--seed",
            "1",
            "--preview",
            str(tmp_path / "sheet.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "sheet.png").size[0] > 500
    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0, r.output
    assert "10 patients" in r.output and "class balance" in r.output
    # 8 training patients: too few of a class for 5-fold cv, and inspect says so
    assert "5-fold cross-validation needs" in r.output
    # a broken image is found by --check-images
    first = sorted((out / "trainset").glob("*/*.jpg"))[0]
    first.write_bytes(b"not a jpeg")
    r = runner.invoke(app, ["inspect", str(out), "--check-images"])
    assert r.exit_code == 0 and "unreadable-image" in r.output and first.parent.name in r.output


def test_cli_version_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and "cellbag" in r.output
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "cellbag", "inspect", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert "nope" in p.stderr and "Traceback" not in p.stderr
