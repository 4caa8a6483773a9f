import json
import re
import sys

import numpy as np
import pandas as pd
import pytest

from cellbag.aggregate import load_bags
from cellbag.errors import CellbagError
from cellbag.evaluate import fit_model, load_model


def test_fit_save_load_predict(store_path, tmp_path):
    model = fit_model(str(store_path), "abmil", tmp_path / "m", params={"epochs": 5})
    files = {p.name for p in (tmp_path / "m" / "member0").iterdir()}
    assert files == {"head.json", "head.safetensors", "clinical.json"}
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["threshold"] == {"value": 0.5, "method": "fixed", "source": "given"}
    assert doc["n_train_patients"] == 48
    loaded = load_model(tmp_path / "m")
    test = load_bags(str(store_path), split="test")
    p1 = model.predict_proba(test.bags, test.patients)
    p2 = loaded.predict_proba(test.bags, test.patients)
    np.testing.assert_allclose(p1, p2, rtol=1e-6)
    pred = loaded.predict_store(str(store_path))
    assert pred["patient_id"].tolist() == test.patient_ids
    np.testing.assert_allclose(pred["probability"], p2, rtol=1e-6)
    w = loaded.cell_weights(test.bags[:2], test.patients.iloc[:2])
    assert [len(x) for x in w] == [len(b) for b in test.bags[:2]]


def test_lgbm_ensemble_youden(store_path, tmp_path):
    model = fit_model(
        str(store_path),
        "lgbm",
        tmp_path / "m",
        ensemble=3,
        threshold="youden",
        params={"n_estimators": 30},
    )
    assert len(model.members) == 3
    assert (tmp_path / "m" / "member2" / "lgbm_model.txt").is_file()
    t = model.doc["threshold"]
    assert t["method"] == "youden" and "3-fold ensemble" in t["source"] and 0 <= t["value"] <= 1
    pred = load_model(tmp_path / "m").predict_store(str(store_path))
    assert (pred["predicted"] == (pred["probability"] >= t["value"])).all()


def test_youden_from_cv_run(cv_run, store_path, tmp_path):
    out, _ = cv_run
    model = fit_model(str(store_path), "meanpool", tmp_path / "m", threshold="youden", cv_run=out)
    oof = pd.read_csv(out / "meanpool" / "oof_predictions.csv")
    assert model.threshold in set(oof["probability"].round(12)) or 0 < model.threshold < 1
    assert "oof_predictions.csv" in model.doc["threshold"]["source"]
    with pytest.raises(CellbagError, match="that cv run used clinical=True"):
        fit_model(
            str(store_path),
            "meanpool",
            tmp_path / "n",
            clinical=False,
            threshold="youden",
            cv_run=out,
        )
    with pytest.raises(CellbagError, match="--threshold must be a number, 'youden' or 'triage"):
        fit_model(str(store_path), "meanpool", tmp_path / "o", threshold="best")


def _cli(monkeypatch, capsys, *args):
    from cellbag.cli import main

    monkeypatch.setattr(sys, "argv", ["cellbag", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr()


def test_cli_cv_fit_predict(store_path, tmp_path, monkeypatch, capsys):
    code, io = _cli(
        monkeypatch,
        capsys,
        "cv",
        store_path,
        "--head",
        "meanpool,maxpool",
        "--folds",
        "3",
        "--repeats",
        "1",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, io.err
    assert "meanpool" in io.out and "maxpool" in io.out
    # the clinical-only baseline is listed beside the heads asked for
    heads = pd.read_csv(tmp_path / "run" / "comparison.csv")["head"].tolist()
    assert heads == ["meanpool", "maxpool", "clinical"]
    code, io = _cli(
        monkeypatch,
        capsys,
        "fit",
        store_path,
        "--head",
        "maxpool",
        "--out",
        tmp_path / "m",
        "--threshold",
        "triage:0.9",
        "--cv-run",
        tmp_path / "run",
    )
    assert code == 0, io.err
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["threshold"]["method"] == "triage" and doc["threshold"]["target_sensitivity"] == 0.9
    # the cut reaches the target on the run's out-of-fold predictions it was chosen from
    oof = pd.read_csv(tmp_path / "run" / "maxpool" / "oof_predictions.csv")
    m = oof.groupby("patient_id").agg(y=("label", "first"), p=("probability", "mean"))
    assert (m.loc[m.y == 1, "p"] >= doc["threshold"]["value"]).mean() >= 0.9
    code, io = _cli(
        monkeypatch, capsys, "predict", tmp_path / "m", store_path, "--out", tmp_path / "sub.csv"
    )
    assert code == 0, io.err
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["Id", "Predicted"] and len(sub) == 10
    assert set(sub["Predicted"]) <= {0, 1}
    proba = pd.read_csv(tmp_path / "sub_proba.csv")
    assert list(proba.columns) == ["Id", "Probability", "Predicted", "Threshold", "Triage"]
    t = doc["threshold"]["value"]
    assert (proba["Threshold"] == t).all() and set(proba["Triage"]) <= {"cytometry", "spared"}
    assert ((proba["Triage"] == "spared") == (proba["Probability"] < t)).all()
    # the console wraps at its width (a long tmp path moves the breaks): compare unwrapped
    assert "sparedofcytometry" in re.sub(r"\s+", "", io.out)


def test_cli_errors_are_one_line(store_path, tmp_path, monkeypatch, capsys):
    code, io = _cli(
        monkeypatch,
        capsys,
        "cv",
        store_path,
        "--encoder",
        "nope",
        "--head",
        "meanpool",
        "--out",
        tmp_path / "r",
    )
    assert code == 2 and "cellbag featurize" in io.err and "Traceback" not in io.err
    code, io = _cli(
        monkeypatch, capsys, "cv", store_path, "--head", "abmil,foo", "--out", tmp_path / "r"
    )
    assert code == 2 and "unknown head 'foo'" in io.err
    code, io = _cli(
        monkeypatch, capsys, "predict", tmp_path / "none", store_path, "--out", tmp_path / "s.csv"
    )
    assert code == 2 and "no model.json" in io.err


@pytest.mark.parametrize(
    "where, name",
    [
        ("member", "../elsewhere"),
        ("member", "/tmp"),
        ("text", "../../outside.txt"),
        ("text", "/dev/zero"),  # would fill the memory
        ("text", "link.txt"),  # a link inside the folder that points out of it
    ],
)
def test_a_model_folder_cannot_point_outside_itself(store_path, tmp_path, where, name):
    # model folders come from others: the names in their json are data, never paths
    from cellbag.aggregate.base import Head
    from cellbag.errors import CellbagError

    fit_model(str(store_path), "lgbm", tmp_path / "m", params={"n_estimators": 5})
    outside = tmp_path / "outside.txt"
    outside.write_text("a user's file")
    (tmp_path / "elsewhere").mkdir()
    member = tmp_path / "m" / "member0"
    if where == "member":
        doc_path, key = tmp_path / "m" / "model.json", "members"
    else:
        doc_path, key = member / "head.json", "texts"
        (member / "link.txt").symlink_to(outside)
    doc = json.loads(doc_path.read_text())
    doc[key] = [name]
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(CellbagError, match="cannot name a file here") as err:
        if where == "member":
            load_model(tmp_path / "m")
        else:
            Head.load(member)
    assert "\n" not in str(err.value) and repr(name) in str(err.value)
    assert outside.read_text() == "a user's file"
