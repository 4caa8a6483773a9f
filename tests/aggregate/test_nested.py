"""Thresholds are chosen inside the training fold; a fine-tuned encoder is never scored on
the patients whose labels trained it."""

import json

import numpy as np
import pandas as pd
import pytest

from cellbag.aggregate import BagSet
from cellbag.aggregate.synthetic import witness_cohort, witness_store
from cellbag.evaluate import cross_validate, fit_model, fitting, outputs, run_cv
from cellbag.evaluate.leaks import LabelLeakError


def test_nested_threshold_never_sees_the_outer_fold(tmp_path, monkeypatch):
    wc = witness_cohort(36, 10, 8, witnesses=3, seed=0)
    data = BagSet.from_arrays(wc.bags, wc.y)
    fits, chosen = [], []
    real_fit, real_select = fitting.fit_fold, outputs.select_thresholds

    def spy_fit(data, name, train, test, *a, **k):
        fits.append(({data.patient_ids[i] for i in train}, {data.patient_ids[i] for i in test}))
        return real_fit(data, name, train, test, *a, **k)

    def spy_select(ids, y, p, target):
        chosen.append(set(ids))
        return real_select(ids, y, p, target)

    monkeypatch.setattr(fitting, "fit_fold", spy_fit)
    monkeypatch.setattr(outputs, "select_thresholds", spy_select)
    cross_validate(
        data,
        "meanpool",
        tmp_path,
        clinical=False,
        folds=3,
        repeats=2,
        inner_folds=2,
        quiet=True,
        triage_sensitivity=0.8,  # the conformal cut needs >= 1 / (1 - target) - 1 tumoral
    )
    splits = json.loads((tmp_path / "splits.json").read_text())["splits"]
    assert len(chosen) == len(splits) and len(fits) == len(splits) * 3
    for k, s in enumerate(splits):
        outer_train, outer_test = set(s["train"]), set(s["test"])
        # the threshold of this outer fold comes from its training patients only, all of them
        assert chosen[k] == outer_train and not chosen[k] & outer_test
        # the outer fit, then inner fits that never touch the outer test patients
        assert fits[3 * k] == (outer_train, outer_test)
        inner = fits[3 * k + 1 : 3 * k + 3]
        for tr, te in inner:
            assert (tr | te) <= outer_train and not (tr | te) & outer_test
        assert set().union(*(te for _, te in inner)) == outer_train
    oof = pd.read_csv(tmp_path / "meanpool" / "oof_predictions.csv")
    # the same figures twice from the same seed
    again = tmp_path / "again"
    cross_validate(
        data,
        "meanpool",
        again,
        clinical=False,
        folds=3,
        repeats=2,
        inner_folds=2,
        quiet=True,
        triage_sensitivity=0.8,
    )
    assert (again / "meanpool" / "oof_predictions.csv").read_bytes() == (
        tmp_path / "meanpool" / "oof_predictions.csv"
    ).read_bytes()
    a = json.loads((again / "meanpool" / "metrics.json").read_text())
    b = json.loads((tmp_path / "meanpool" / "metrics.json").read_text())
    assert a["metrics"] == b["metrics"]
    assert oof["triage_threshold"].nunique() > 1  # one cut per fold, not one for all


def test_calibrate_is_fitted_inside_the_fold(tmp_path):
    wc = witness_cohort(36, 10, 8, witnesses=3, seed=1)
    data = BagSet.from_arrays(wc.bags, wc.y)
    cross_validate(
        data,
        "meanpool",
        tmp_path,
        clinical=False,
        folds=3,
        repeats=1,
        inner_folds=2,
        calibrate="isotonic",
        quiet=True,
    )
    oof = pd.read_csv(tmp_path / "meanpool" / "oof_predictions.csv")
    assert "probability_raw" in oof and not np.allclose(oof["probability"], oof["probability_raw"])
    m = json.loads((tmp_path / "meanpool" / "metrics.json").read_text())
    assert m["calibration"]["method"] == "isotonic" and m["calibration"]["reliability"]
    with pytest.raises(Exception, match="--calibrate must be one of"):
        cross_validate(data, "meanpool", tmp_path / "x", clinical=False, calibrate="platt")


@pytest.fixture
def tuned_store(tmp_path):
    """A store whose second encoder was 'fine-tuned' on the labels of 8 training patients."""
    from cellbag.store import Store

    path = tmp_path / "store.zarr"
    store, eid, wc = witness_store(str(path), n_train=24, n_test=4, cells=(5, 8), dim=8)
    st = Store.open(str(path), mode="r+")
    x = np.concatenate([st.bag(p, eid) for p in st.patients()["patient_id"]])
    tuned = [f"P{i}" for i in range(8)]
    st.add_embeddings(
        "tuned", x, {"name": "synthetic", "dim": 8, "adapter": {"label_patients": tuned}}
    )
    return path, tuned


def test_cv_and_fit_refuse_a_finetuned_encoder_on_its_patients(tuned_store, tmp_path):
    path, tuned = tuned_store
    with pytest.raises(LabelLeakError, match="labels of 8 of these 24 training patients") as e:
        run_cv(str(path), "tuned", "meanpool", tmp_path / "r", folds=3, repeats=1, quiet=True)
    assert "--holdout-finetuned" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LabelLeakError, match="cellbag fit"):
        fit_model(str(path), "meanpool", tmp_path / "m", "tuned", threshold="triage")
    # a fixed threshold scores nobody: fitting is allowed
    fit_model(str(path), "meanpool", tmp_path / "m", "tuned", threshold=0.5)
    # held out: the run scores only the 16 others
    run_cv(
        str(path),
        "tuned",
        "meanpool",
        tmp_path / "r",
        folds=3,
        repeats=1,
        inner_folds=2,
        quiet=True,
        holdout_finetuned=True,
    )
    oof = pd.read_csv(tmp_path / "r" / "meanpool" / "oof_predictions.csv")
    assert oof["patient_id"].nunique() == 16 and not set(oof["patient_id"]) & set(tuned)


def test_cli_leak_refusal_is_one_line(tuned_store, tmp_path, monkeypatch, capsys):
    import sys

    from cellbag.cli import main

    path, _ = tuned_store
    argv = ["cellbag", "cv", str(path), "-e", "tuned", "--head", "meanpool", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and "fine-tuned" in err


def test_fit_calibrates_and_picks_triage_from_out_of_fold(tmp_path):
    from cellbag.evaluate import load_model

    path = tmp_path / "s.zarr"
    witness_store(str(path), n_train=30, n_test=6, cells=(5, 8), dim=8)
    m = fit_model(
        str(path), "meanpool", tmp_path / "m", threshold="triage:0.9", calibrate="sigmoid"
    )
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["calibration"]["kind"] == "sigmoid" and doc["threshold"]["method"] == "triage"
    assert "inner 5-fold cv" in doc["threshold"]["source"]
    plain = fit_model(str(path), "meanpool", tmp_path / "p", threshold=0.5)
    pred = load_model(tmp_path / "m").predict_store(str(path), split="test")
    raw = plain.predict_store(str(path), split="test")
    # the same head, its probabilities mapped by the calibrator fitted on out-of-fold ones
    assert not np.allclose(pred["probability"], raw["probability"])
    # a monotone map: ordered by the raw probability, the calibrated ones never go down
    # (values, not argsort indices, which near-ties may swap)
    order = np.argsort(raw["probability"].to_numpy(), kind="stable")
    assert (np.diff(pred["probability"].to_numpy()[order]) >= -1e-9).all()
    assert (pred["threshold"] == m.threshold).all() and "triage" not in raw
    assert ((pred["triage"] == "spared") == (pred["probability"] < m.triage_threshold)).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibrate", "platt"], "--calibrate must be one of sigmoid, isotonic"),
        (["--triage-sensitivity", "1.5"], "--triage-sensitivity must be in (0, 1]"),
        (["--inner-folds", "1"], "--inner-folds must be 0 (off) or >= 2"),
    ],
)
def test_cli_bad_statistics_options_are_one_line(
    tuned_store, tmp_path, monkeypatch, capsys, args, message
):
    import sys

    from cellbag.cli import main

    path, _ = tuned_store
    argv = ["cellbag", "cv", str(path), "--head", "meanpool", "--out", str(tmp_path / "r"), *args]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
