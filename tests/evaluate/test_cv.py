import json

import numpy as np
import pandas as pd
import pytest

from cellbag.aggregate import BagSet, load_bags
from cellbag.data import ClinicalScaler
from cellbag.errors import CellbagError
from cellbag.evaluate import fit_fold, run_cv
from cellbag.evaluate.metrics import METRICS
from cellbag.store import Store


def test_run_folder_layout(cv_run, store_path):
    out, table = cv_run
    assert (out / "splits.json").is_file() and (out / "comparison.csv").is_file()
    assert list(table["head"]) == ["meanpool", "abmil", "lgbm", "clinical"]
    n_train = 48
    for head in ("meanpool", "abmil", "lgbm"):
        d = out / head
        for f in ("metrics.json", "oof_predictions.csv", "roc.png", "config.json"):
            assert (d / f).is_file(), d / f
        m = json.loads((d / "metrics.json").read_text())
        assert m["format"] == "cellbag-cv-metrics" and m["interval"]["resamples"] >= 2000
        assert set(m["metrics"]) == set(METRICS)
        for k, v in m["metrics"].items():
            assert set(v) >= {"value", "ci95_low", "ci95_high", "fold_sd", "fold_min", "fold_max"}
            if k not in ("triage_sensitivity",) and v["fold_sd"] > 0:
                assert v["ci95_low"] < v["ci95_high"], k
            assert v["ci95_low"] <= v["value"] + 1e-9 and v["value"] <= v["ci95_high"] + 1e-9, k
            assert v["n_folds"] <= 6
        assert len(m["per_fold"]) == 6 and m["best"] in table["head"].tolist()
        assert m["thresholds"]["triage"]["target_sensitivity"] == 0.95
        oof = pd.read_csv(d / "oof_predictions.csv")
        assert list(oof.columns) == [
            "patient_id",
            "repeat",
            "fold",
            "probability",
            "label",
            "youden_threshold",
            "triage_threshold",
            # a fused image head keeps its log-odds as base + image + clinical terms
            "log_odds_base",
            "log_odds_image",
            "log_odds_clinical",
        ]
        # one threshold per outer fold
        assert (oof.groupby(["repeat", "fold"])["triage_threshold"].nunique() == 1).all()
        assert len(oof) == n_train * 2  # each training patient once per repeat
        assert oof.groupby("repeat")["patient_id"].nunique().tolist() == [n_train, n_train]
    att = pd.read_csv(out / "abmil" / "attention.csv")
    assert list(att.columns) == ["patient_id", "cell_id", "path", "repeat", "fold", "weight"]
    sums = att.groupby(["patient_id", "repeat"])["weight"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    store = Store.open(str(store_path))
    cells = store.bag_cells("P0")
    assert (
        att[(att.patient_id == "P0") & (att.repeat == 0)]["cell_id"].tolist()
        == cells["cell_id"].tolist()
    )
    assert not (out / "lgbm" / "attention.csv").exists()


def test_only_training_patients_in_splits(cv_run, store_path):
    out, _ = cv_run
    splits = json.loads((out / "splits.json").read_text())["splits"]
    train = set(Store.open(str(store_path)).patients().query("split == 'train'")["patient_id"])
    for s in splits:
        assert set(s["train"]) | set(s["test"]) == train
        assert not set(s["train"]) & set(s["test"])


def test_same_seed_identical_metrics_and_resume(cv_run, store_path, tmp_path, fast):
    out, _ = cv_run
    run_cv(
        str(store_path),
        heads="meanpool,abmil",
        out=tmp_path,
        folds=3,
        repeats=2,
        seed=0,
        head_params=fast,
        threads=1,
        quiet=True,
        inner_folds=2,
    )
    for head in ("meanpool", "abmil"):
        assert (tmp_path / head / "oof_predictions.csv").read_bytes() == (
            out / head / "oof_predictions.csv"
        ).read_bytes()
        a = json.loads((tmp_path / head / "metrics.json").read_text())
        b = json.loads((out / head / "metrics.json").read_text())
        # the same figures and intervals; `best`/`vs_best` depend on the other heads run
        assert a["metrics"] == b["metrics"] and a["per_fold"] == b["per_fold"]
    # rerun: finished folds are reused, results unchanged
    before = (tmp_path / "abmil" / "folds" / "r0_f0.json").stat().st_mtime_ns
    run_cv(
        str(store_path),
        heads="abmil",
        out=tmp_path,
        folds=3,
        repeats=2,
        seed=0,
        head_params=fast,
        threads=1,
        quiet=True,
        inner_folds=2,
    )
    assert (tmp_path / "abmil" / "folds" / "r0_f0.json").stat().st_mtime_ns == before
    with pytest.raises(CellbagError, match="made for other settings"):
        run_cv(str(store_path), heads="meanpool", out=tmp_path, folds=4, quiet=True)


def test_no_test_label_is_read(store_path, tmp_path, monkeypatch, fast):
    kw = dict(heads="meanpool,lgbm", folds=3, repeats=1, seed=0, head_params=fast, quiet=True)
    kw["inner_folds"] = 2
    kw["jobs"] = 1  # the poisoned reader is this process's
    ref = run_cv(str(store_path), out=tmp_path / "a", **kw)
    real = Store.patients

    def poisoned(self):
        df = real(self)
        test = df["split"] == "test"
        df["label"] = df["label"].astype(object)
        df.loc[test, "label"] = "POISON"  # anything that reads it would break or change
        return df

    monkeypatch.setattr(Store, "patients", poisoned)
    got = run_cv(str(store_path), out=tmp_path / "b", **kw)
    pd.testing.assert_frame_equal(ref.drop(columns="seconds"), got.drop(columns="seconds"))
    test = load_bags(str(store_path), split="test")
    assert test.labels is None and "label" not in test.patients.columns


def test_test_labels_absent_or_present_give_same_cv(tmp_path):
    from cellbag.aggregate.synthetic import witness_store

    kw = dict(heads="meanpool", folds=3, repeats=1, seed=0, quiet=True)
    witness_store(str(tmp_path / "with.zarr"), 30, 6, 12, 8, seed=2, test_labels=True)
    witness_store(str(tmp_path / "without.zarr"), 30, 6, 12, 8, seed=2, test_labels=False)
    a = run_cv(str(tmp_path / "with.zarr"), out=tmp_path / "a", **kw)
    b = run_cv(str(tmp_path / "without.zarr"), out=tmp_path / "b", **kw)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_transforms_fitted_on_training_rows_only(store_path):
    data = load_bags(str(store_path))
    tr, te = np.arange(0, 36), np.arange(36, 48)
    all_cells = np.concatenate(data.bags).astype(np.float64)
    train_cells = np.concatenate([data.bags[i] for i in tr]).astype(np.float64)

    res = fit_fold(data, "lgbm", tr, te, clinical=True, seed=0, params={"n_estimators": 10})
    assert res.clinical_state == ClinicalScaler().fit(data.patients.iloc[tr]).to_dict()
    assert res.clinical_state != ClinicalScaler().fit(data.patients).to_dict()
    np.testing.assert_allclose(res.head.stats_.mean_, train_cells.mean(0), rtol=1e-6)
    assert not np.allclose(res.head.stats_.mean_, all_cells.mean(0), rtol=1e-6)
    # k-means centres live where the training cells are: each is a mean of training cells
    proj = res.head.stats_.project(np.concatenate([data.bags[i] for i in tr]))
    assign = res.head.stats_.assign(proj)
    for j, c in enumerate(res.head.stats_.centers_):
        if (assign == j).any():
            np.testing.assert_allclose(c, proj[assign == j].mean(0), atol=1e-6)

    res = fit_fold(data, "abmil", tr, te, clinical=True, seed=0, params={"epochs": 2})
    # the input standardisation is label-free and fitted on the training fold's cells
    np.testing.assert_allclose(res.head.feat_mean_, train_cells.mean(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(res.head.feat_mean_, all_cells.mean(0), rtol=1e-5, atol=1e-6)


def test_missing_or_unfinished_encoder_names_the_command(store_path, tmp_path):
    with pytest.raises(CellbagError, match=r"no embeddings for encoder 'nope'.*cellbag featurize"):
        run_cv(str(store_path), "nope", heads="meanpool", out=tmp_path / "x", quiet=True)
    from cellbag.aggregate.synthetic import witness_store

    path = str(tmp_path / "partial.zarr")
    store, _, _ = witness_store(path, 12, 2, 5, 4, seed=1)
    store.init_encoder("half", 4, {"name": "half"})
    with pytest.raises(CellbagError, match=r"unfinished.*cellbag featurize"):
        run_cv(path, "half", heads="meanpool", out=tmp_path / "y", quiet=True)
    with pytest.raises(CellbagError, match="several encoders"):
        run_cv(path, None, heads="meanpool", out=tmp_path / "z", quiet=True)


def test_cross_validate_on_arrays_without_store(tmp_path, witness):
    from cellbag.evaluate import cross_validate

    data = BagSet.from_arrays(witness.bags[:40], witness.y[:40], clinical=witness.clinical[:40])
    table = cross_validate(data, ["maxpool"], tmp_path, folds=2, repeats=1, quiet=True)
    assert table.loc[0, "head"] == "maxpool" and (tmp_path / "maxpool" / "metrics.json").is_file()
