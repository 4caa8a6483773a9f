"""Reading a teacher cv run: soft targets, attention aligned with the store's cell order."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cellbag.distill import DistillError, read_teacher
from cellbag.distill.teacher import resolve_head_folder
from cellbag.distill.train import training_patients


def _pids(store):
    p = store.patients()
    return list(p.loc[p["split"] == "train", "patient_id"])


def test_best_head_is_picked_and_probabilities_are_averaged_over_repeats(featurized, teacher_run):
    store, eid = featurized
    assert resolve_head_folder(teacher_run).name == "abmil"  # 0.8 > 0.7
    t = read_teacher(teacher_run, store, _pids(store))
    oof = pd.read_csv(teacher_run / "abmil" / "oof_predictions.csv", dtype={"patient_id": str})
    expect = oof.groupby("patient_id")["probability"].mean()
    assert t.encoder_id == eid and t.head == "abmil"
    for pid, p in t.probabilities.items():
        assert p == pytest.approx(expect[pid])
    assert t.id.startswith("run/abmil@" + eid)
    # a head folder given directly; a head without attention
    t2 = read_teacher(teacher_run / "meanpool", store, _pids(store))
    assert t2.attention is None and t2.head == "meanpool"


def test_attention_targets_line_up_with_the_store_cell_order(featurized, teacher_run):
    store, _ = featurized
    pids = _pids(store)
    t = read_teacher(teacher_run, store, pids)
    att = pd.read_csv(teacher_run / "abmil" / "attention.csv", dtype={"patient_id": str})
    for pid in pids:
        order = list(store.bag_cells(pid)["cell_id"])
        per_cell = att[att["patient_id"] == pid].groupby("cell_id")["weight"].mean()
        expect = per_cell.reindex(order).to_numpy()
        expect = expect / expect.sum()
        got = t.attention[pid]
        assert len(got) == len(store.bag(pid, t.encoder_id)) == len(order)
        np.testing.assert_allclose(got, expect, rtol=1e-6)
        assert got.sum() == pytest.approx(1.0, abs=1e-6)


def test_alignment_survives_reordered_rows_but_not_foreign_cells(featurized, teacher_run, tmp_path):
    store, _ = featurized
    pids = _pids(store)
    run = tmp_path / "run"
    shutil.copytree(teacher_run / "abmil", run / "abmil")
    att = pd.read_csv(run / "abmil" / "attention.csv", dtype={"patient_id": str})
    ref = read_teacher(run, store, pids)
    # a weight that identifies each cell: its index in the patient's bag + 1
    order = {pid: list(store.bag_cells(pid)["cell_id"]) for pid in pids}
    att["weight"] = [
        order[p].index(c) + 1.0 for p, c in zip(att["patient_id"], att["cell_id"], strict=True)
    ]
    att.iloc[::-1].to_csv(run / "abmil" / "attention.csv", index=False)
    t = read_teacher(run, store, pids)
    for pid in pids:
        n = len(order[pid])
        np.testing.assert_allclose(
            t.attention[pid], np.arange(1, n + 1) / (n * (n + 1) / 2), rtol=1e-6
        )
    assert t.digest != ref.digest
    # a cell of the store without a weight: the run was made from another store
    victim = pids[0]
    dropped = att[att["cell_id"] != order[victim][1]]
    dropped.to_csv(run / "abmil" / "attention.csv", index=False)
    with pytest.raises(DistillError, match=f"patient {victim}: cell {order[victim][1]}"):
        read_teacher(run, store, pids)
    # a weighted cell the store does not hold
    extra = pd.concat([att, att.iloc[[0]].assign(cell_id=f"{att.iloc[0]['patient_id']}/ghost.jpg")])
    extra.to_csv(run / "abmil" / "attention.csv", index=False)
    with pytest.raises(DistillError, match="ghost.jpg"):
        read_teacher(run, store, pids)


def test_bad_teacher_runs_give_one_line_errors(featurized, teacher_run, tmp_path):
    store, eid = featurized
    pids = _pids(store)
    with pytest.raises(DistillError, match="not found"):
        read_teacher(tmp_path / "nope", store, pids)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="not a cv run folder"):
        read_teacher(tmp_path / "empty", store, pids)
    run = tmp_path / "run"
    shutil.copytree(teacher_run / "abmil", run / "abmil")
    oof = pd.read_csv(run / "abmil" / "oof_predictions.csv", dtype={"patient_id": str})
    oof[oof["patient_id"] != pids[2]].to_csv(run / "abmil" / "oof_predictions.csv", index=False)
    with pytest.raises(DistillError, match=f"patient {pids[2]} has no out-of-fold"):
        read_teacher(run, store, pids)
    oof.assign(probability=1.5).to_csv(run / "abmil" / "oof_predictions.csv", index=False)
    with pytest.raises(DistillError, match="is not a number in \\[0, 1\\]"):
        read_teacher(run, store, pids)
    oof.to_csv(run / "abmil" / "oof_predictions.csv", index=False)
    (run / "abmil" / "config.json").write_text(json.dumps({"head": "abmil", "encoder_id": "vit-x"}))
    with pytest.raises(DistillError, match="teacher encoder vit-x is not in store"):
        read_teacher(run, store, pids)
    # no encoder named: the store's only encoder is used
    (run / "abmil" / "config.json").write_text(json.dumps({"head": "abmil"}))
    assert read_teacher(run, store, pids).encoder_id == eid


def test_training_patients_never_read_test_labels(cohort):
    pats = cohort.patients.copy()
    test = pats["split"] == "test"
    assert test.any() and pats.loc[test, "label"].isna().all()
    # even if a test label were present, it is dropped with its patient
    pats.loc[test, "label"] = 1
    pids, labels = training_patients(pats)
    assert set(pids).isdisjoint(set(pats.loc[test, "patient_id"]))
    assert len(pids) == len(labels) == int((~test).sum())
    bad = cohort.patients.copy()
    bad.loc[bad.index[0], "label"] = pd.NA
    with pytest.raises(
        DistillError, match=f"training patient {bad.iloc[0]['patient_id']} has no label"
    ):
        training_patients(bad)


def test_real_cv_run_and_fitted_model_as_teachers(featurized, tmp_path):
    """The run folder and MODEL_DIR written by stage 2 itself read as teachers."""
    import warnings

    from cellbag.evaluate import fit_model, run_cv

    store, eid = featurized
    pids = _pids(store)
    params = {"abmil": {"epochs": 3, "hidden": 16, "attn_dim": 8}}
    run_cv(
        store,
        eid,
        "abmil",
        tmp_path / "run",
        folds=2,
        repeats=2,
        seed=0,
        head_params=params,
        threads=1,
        quiet=True,
    )
    t = read_teacher(tmp_path / "run", store, pids)
    assert t.encoder_id == eid and t.head == "abmil" and t.kind == "cv"
    oof = pd.read_csv(tmp_path / "run" / "abmil" / "oof_predictions.csv", dtype={"patient_id": str})
    assert oof.groupby("patient_id").size().eq(2).all()
    expect = oof.groupby("patient_id")["probability"].mean()
    assert all(t.probabilities[p] == pytest.approx(expect[p]) for p in pids)
    for pid in pids:
        assert len(t.attention[pid]) == len(store.bag_cells(pid))
        assert t.attention[pid].sum() == pytest.approx(1.0, abs=1e-5)
    assert t.summary()["metrics"]  # the run's metrics.json travels with the student
    fit_model(store, "abmil", tmp_path / "model", encoder_id=eid, params=params["abmil"], threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = read_teacher(tmp_path / "model", store, pids)
    assert m.kind == "model" and m.encoder_id == eid and m.id.startswith("model@")
    assert set(m.probabilities) == set(pids) and m.attention is not None
    assert all(len(m.attention[p]) == len(store.bag_cells(p)) for p in pids)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A real cv run (meanpool, no inner folds) on a witness store with a test split."""
    from cellbag.aggregate.synthetic import witness_store
    from cellbag.evaluate import run_cv
    from cellbag.store import Store

    root = tmp_path_factory.mktemp("heldout")
    witness_store(str(root / "s.zarr"), n_train=24, n_test=8, cells=(5, 8), dim=8, test_labels=True)
    run_cv(
        str(root / "s.zarr"),
        None,
        "meanpool",
        root / "run",
        folds=3,
        repeats=2,
        inner_folds=0,
        quiet=True,
    )
    return Store.open(str(root / "s.zarr")), root / "run"


def test_cv_predictor_is_the_runs_own_fold_models(small_run):
    from cellbag.distill.teacher import cv_predictor, fold_predictions

    store, run = small_run
    p = store.patients()
    train = list(p.loc[p["split"] == "train", "patient_id"])
    test = list(p.loc[p["split"] == "test", "patient_id"])
    # refitted fold models reproduce the run's out-of-fold predictions exactly
    per_fold = fold_predictions(run, store, train, allow_training=True)
    splits = json.loads((run / "splits.json").read_text())["splits"]
    oof = pd.read_csv(run / "meanpool" / "oof_predictions.csv", dtype={"patient_id": str})
    for k, s in enumerate(splits):
        got = dict(zip(train, per_fold[k], strict=True))
        want = oof[oof["repeat"] == s["repeat"]].set_index("patient_id")["probability"]
        for pid in s["test"]:
            assert got[pid] == pytest.approx(want[pid], abs=1e-6)
    held = cv_predictor(run, store, test)
    assert held.shape == (len(test),) and ((held >= 0) & (held <= 1)).all()
    # scoring the teacher on its own training patients is refused in one line
    with pytest.raises(
        DistillError, match=f"of these {len(train[:3])} patients .* trained the teacher"
    ):
        cv_predictor(run, store, train[:3])


def test_student_and_teacher_compared_on_the_same_heldout_patients(tmp_path):
    from cellbag.distill.teacher import check_heldout, compare_heldout, write_validation

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30), np.ones(30)].astype(int)
    ids = [f"H{i}" for i in range(60)]
    t = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, 60), 0, 1)
    s = np.clip(t + rng.normal(0, 0.05, 60), 0, 1)
    doc = compare_heldout(y, {"teacher": (t, 0.5), "student": (s, 0.4)}, ids, seed=0)
    assert doc == compare_heldout(y, {"teacher": (t, 0.5), "student": (s, 0.4)}, ids, seed=0)
    f = doc["figures"]["student"]["balanced_accuracy"]
    want = ((s >= 0.4)[y == 1].mean() + (s < 0.4)[y == 0].mean()) / 2  # its own threshold
    assert f["value"] == pytest.approx(want) and f["ci95_low"] < f["value"] < f["ci95_high"]
    assert {p["metric"] for p in doc["pairs"]} == {"roc_auc", "balanced_accuracy"}
    path = write_validation(tmp_path, doc)
    assert json.loads(path.read_text())["n_patients"] == 60
    with pytest.raises(DistillError, match="1 of these 2 patients"):
        check_heldout(["H1", "X"], ["H1", "H2"])
