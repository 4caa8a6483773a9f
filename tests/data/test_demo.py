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
from cellbag.data.demo import make_demo_cohort, render_cell


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


def _per_patient(root: Path) -> pd.DataFrame:
    """Label, share of key cells and share of activated cells of each patient."""
    t = pd.read_csv(root / "ground_truth.csv")
    t["activated"] = t["cell_type"] == "activated"
    return t.groupby("patient_id").agg(
        label=("label", "first"), key=("is_key", "mean"), activated=("activated", "mean")
    )


def _clinical_auc(root: Path) -> float:
    """ROC AUC of age + log lymphocyte count (each standardised): the clinical signal."""
    from sklearn.metrics import roc_auc_score

    from cellbag.data import ClinicalScaler

    p = read_cohort(root).patients.dropna(subset=["label"])
    x = ClinicalScaler().fit_transform(p)  # standardised age and log count, among others
    score = x[:, 0] + x[:, 4]
    return roc_auc_score(p["label"].astype(int), score)


def test_default_preset_hides_a_few_key_cells_and_has_clinical_signal(tmp_path: Path) -> None:
    """What makes the default cohort a MIL problem with clinical data worth fusing (the
    heads' figures on it are measured by benchmarks/demo_presets.py: attention vs mean
    pooling, fused vs image-only)."""
    root = make_demo_cohort(tmp_path / "d", patients=60, cells_per_patient=20, seed=0)
    per = _per_patient(root)
    assert per.loc[per["label"] == 0, "key"].max() == 0
    frac = per.loc[per["label"] == 1, "key"]
    # about a fifth of tumoral smears show no key cell (7 of 36 here): images alone cannot
    # call them, clinical values can help
    silent = frac == 0
    assert 0.1 <= silent.mean() <= 0.35
    # the others hold a few: 5-15 % (at least one; rounding in 15-25 cells)
    shown = frac[~silent]
    assert 0.05 <= shown.mean() <= 0.15 and shown.max() <= 0.2
    truth = pd.read_csv(root / "ground_truth.csv")
    assert set(truth.loc[truth["is_key"] == 1, "cell_type"]) == {"cleaved"}
    # each patient has its own mix of normal and activated cells, in both classes alike: the
    # spread of the activated share is far above what sampling 15-25 cells alone gives (~0.11)
    assert per["activated"].std() > 0.15
    # clinical values carry a real but partial signal (more patients, one cell each): fused
    # can beat both images alone and clinical alone
    auc = _clinical_auc(make_demo_cohort(tmp_path / "c", patients=160, cells_per_patient=1))
    assert 0.75 < auc < 0.92


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


def _nucleus(img: Image.Image) -> np.ndarray:
    """Mask of the dark purple nucleus around the centre of a crop."""
    a = np.asarray(img, dtype=np.float32)[60:164, 60:164]
    return (a[..., 0] < 135) & (a[..., 2] > a[..., 1] + 25)


def test_rare_key_preset(tmp_path: Path) -> None:
    root = make_demo_cohort(tmp_path / "r", patients=24, cells_per_patient=30, preset="rare-key")
    truth = pd.read_csv(root / "ground_truth.csv")
    per = truth.groupby("patient_id").agg(label=("label", "first"), key=("is_key", "mean"))
    assert per.loc[per["label"] == 0, "key"].max() == 0
    frac = per.loc[per["label"] == 1, "key"]
    # 2-6 % of each tumoral bag (at least one cell; rounding in bags of 22-38 cells)
    assert frac.min() > 0 and 0.02 <= frac.mean() <= 0.06 and frac.max() <= 0.08
    assert set(truth.loc[truth["is_key"] == 1, "cell_type"]) == {"cleaved"}
    assert not {"small_mature", "smudge"} & set(truth["cell_type"])
    # and each patient its own mix of normal and activated cells (what hides the key cells
    # from the bag mean, with the stain shift below)
    assert _per_patient(root)["activated"].std() > 0.15
    # clinical values carry no signal on this preset
    p = read_cohort(root).patients.dropna(subset=["label"])
    med = p.groupby("label")["lymph_count"].median()
    assert abs(np.log(med[1] / med[0])) < 0.6

    # key cells differ from normal ones by nucleus shape (a lobed outline: a lower solidity),
    # not by colour
    from skimage.measure import label, regionprops

    rng = np.random.default_rng(0)
    shape, colour = {}, {}
    for t in ("normal", "cleaved"):
        sol, col = [], []
        for _ in range(6):
            im = render_cell(t, rng)
            m = _nucleus(im)
            r = max(regionprops(label(m)), key=lambda x: x.area)
            sol.append(r.solidity)
            col.append(np.asarray(im, np.float32)[60:164, 60:164][m].mean(0))
        shape[t], colour[t] = np.mean(sol), np.mean(col, axis=0)
    assert shape["cleaved"] < shape["normal"] - 0.08
    assert np.abs(colour["cleaved"] - colour["normal"]).max() < 12

    # every patient has its own stain: the background colour differs between patients far
    # more than within one
    cells = read_cohort(root).cells
    bg = cells.groupby("patient_id").head(4).copy()
    bg["rgb"] = [np.asarray(Image.open(f), np.float32)[:20, :20].mean((0, 1)) for f in bg["path"]]
    means = np.stack(bg.groupby("patient_id")["rgb"].apply(lambda s: np.mean(list(s), 0)))
    within = np.mean(
        [np.std(np.stack(list(s)), 0).mean() for _, s in bg.groupby("patient_id")["rgb"]]
    )
    assert means.std(0).mean() > 2 * within


def test_fusion_preset_splits_the_signal(tmp_path: Path) -> None:
    """Images and clinical values each carry a partial signal: clinical values less
    informative than the default cohort's, few witness cells. That late fusion of the two
    beats each alone is
    tested on synthetic bags of the same shape (tests/aggregate/test_fusion.py) and measured
    on this preset's images by benchmarks/demo_presets.py."""
    fu = make_demo_cohort(tmp_path / "f", patients=160, cells_per_patient=1, preset="fusion")
    assert 0.7 < _clinical_auc(fu) < 0.9
    fu = make_demo_cohort(tmp_path / "w", patients=24, cells_per_patient=20, preset="fusion")
    per = _per_patient(fu)
    frac = per.loc[per["label"] == 1, "key"]
    assert 0.0 < frac.mean() < 0.12 and per.loc[per["label"] == 0, "key"].max() == 0
    truth = pd.read_csv(fu / "ground_truth.csv")
    assert set(truth.loc[truth["is_key"] == 1, "cell_type"]) <= {"small_mature", "smudge"}


def test_small_mature_cells_are_darker_than_activated_ones() -> None:
    rng = np.random.default_rng(0)

    def centre(t: str) -> float:
        return float(
            np.mean([np.asarray(render_cell(t, rng))[100:124, 100:124].mean() for _ in range(5)])
        )

    assert centre("small_mature") < centre("activated")


def test_unknown_preset_is_one_clear_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["demo-data", str(tmp_path / "x"), "--preset", "nope"])
    assert r.exit_code == 2 and "unknown preset 'nope'" in r.output
    assert not (tmp_path / "x").exists()


def test_demo_data_draws_the_make_demo_cohort_by_default() -> None:
    """`cellbag demo-data` (and ``make_demo_cohort``) with no options draws the cohort
    `cellbag demo` (make demo) runs on, the one whose figures the README quotes."""
    import inspect

    from cellbag.cli.data_cmds import demo_data_cmd
    from cellbag.cli.demo_cmd import demo_cmd

    def defaults(fn) -> dict:
        return {
            k: getattr(p.default, "default", p.default)
            for k, p in inspect.signature(fn).parameters.items()
            if k in ("patients", "cells_per_patient", "seed")
        }

    assert (
        defaults(demo_data_cmd)
        == defaults(demo_cmd)
        == defaults(make_demo_cohort)
        == {
            "patients": 60,
            "cells_per_patient": 40,
            "seed": 0,
        }
    )
