"""Distillation runs on demo data: the loss goes down, test-split labels and images are never
read, the teacher's encoder never runs, and the CLI writes a model folder."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.distill import DistillError, LossWeights, distill, read_teacher
from cellbag.distill.train import training_patients


def _teacher(store, cohort, run):
    pids, _ = training_patients(cohort.patients)
    return read_teacher(run, store, pids)


def test_a_few_steps_lower_the_loss(featurized, cohort, teacher_run, small_config):
    store, _ = featurized
    teacher = _teacher(store, cohort, teacher_run)
    n_train = len(teacher.probabilities)
    # one full batch per epoch, no augmentation: every step sees the same bags
    cfg = dataclasses.replace(
        small_config,
        epochs=5,
        bags_per_step=n_train,
        cells_per_bag=64,
        encoder_batch=64,
        augment=False,
        lr=1e-3,
        head_lr=3e-3,
    )
    res = distill(store, cohort, teacher, cfg)
    totals = [h["total"] for h in res.history]
    assert len(totals) == 5
    assert totals[-1] < 0.8 * totals[0], totals
    assert {"ce", "kd", "att", "emb"} <= set(res.history[0])


def test_no_test_label_or_image_is_read_and_teacher_encoder_never_runs(
    featurized, cohort, teacher_run, small_config, trained, monkeypatch
):
    import cellbag.featurize.registry as registry

    store, teacher_eid = featurized
    built = []
    real = registry.create_encoder

    def spy(name, *a, **kw):
        built.append((name, kw.get("weights"), kw.get("image_size")))
        return real(name, *a, **kw)

    monkeypatch.setattr(registry, "create_encoder", spy)
    # the same cohort, but with labels written into its test split
    pats = cohort.patients.copy()
    test = pats["split"] == "test"
    pats["label"] = pats["label"].astype("Int64")
    pats.loc[test, "label"] = [1, 0][: int(test.sum())] + [1] * max(0, int(test.sum()) - 2)
    leaky = dataclasses.replace(cohort, patients=pats)
    res = distill(store, leaky, _teacher(store, leaky, teacher_run), small_config)
    # identical weights: the labels of the test split played no part
    a, b = trained.model.state_dict(), res.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    test_ids = set(pats.loc[test, "patient_id"])
    test_paths = set(cohort.cells.loc[cohort.cells["patient_id"].isin(test_ids), "path"])
    assert res.paths_read and not (res.paths_read & test_paths)
    assert test_ids.isdisjoint(res.config["training"]["patients"])
    # only the student's encoder was built: the teacher's never ran
    assert built == [("tf_efficientnet_lite0", "none", 64)]
    assert store.encoder_info(teacher_eid)["image_size"] == 64


def test_attention_term_is_off_for_teachers_without_attention(
    featurized, cohort, teacher_run, small_config
):
    store, _ = featurized
    pids, _ = training_patients(cohort.patients)
    teacher = read_teacher(teacher_run / "meanpool", store, pids)
    res = distill(store, cohort, teacher, small_config, max_steps=1)
    assert "att" not in res.history[0] and "kd" in res.history[0]
    assert res.config["training"]["losses"]["att"] == 0.0
    off = dataclasses.replace(small_config, losses=LossWeights(ce=0, kd=0, att=1.0, emb=0))
    with pytest.raises(DistillError, match="every loss term is switched off"):
        distill(store, cohort, teacher, off)


def test_a_cohort_without_clinical_values_gives_an_image_only_student(
    featurized, cohort, teacher_run, small_config
):
    # as cv does: with no clinical value for any training patient the student has no
    # clinical branch (it would only see imputed constants)
    store, _ = featurized
    teacher = _teacher(store, cohort, teacher_run)
    bare = cohort.patients.assign(gender=None, dob=pd.NaT, lymph_count=float("nan"))
    res = distill(
        store, dataclasses.replace(cohort, patients=bare), teacher, small_config, max_steps=1
    )
    assert res.config["clinical"] == {"enabled": False, "scaler": None}
    assert res.config["head"]["n_clinical"] == 0
    with_values = distill(store, cohort, teacher, small_config, max_steps=1)
    assert (
        with_values.config["clinical"]["enabled"] and with_values.config["head"]["n_clinical"] == 6
    )


def test_store_of_another_cohort_is_refused(featurized, cohort, teacher_run, small_config):
    store, _ = featurized
    teacher = _teacher(store, cohort, teacher_run)
    other = dataclasses.replace(cohort, cells=cohort.cells.iloc[1:].reset_index(drop=True))
    with pytest.raises(DistillError, match="another cohort"):
        distill(store, other, teacher, small_config)


def test_model_config_records_what_deployment_needs(trained):
    doc = json.loads((trained.out / "config.json").read_text())
    assert doc["encoder"]["name"] == "tf_efficientnet_lite0"
    assert doc["encoder"]["image_size"] == 64 and len(doc["encoder"]["mean"]) == 3
    assert doc["clinical"]["scaler"]["reference_date"]
    assert doc["threshold"] == 0.5
    assert doc["teacher"]["head"] == "abmil"
    assert doc["teacher"]["metrics"]["balanced_accuracy"]["value"] == 0.8
    assert doc["head"]["kind"] == "gated-attention-mil" and doc["head"]["n_clinical"] == 6
    assert (trained.out / "weights.safetensors").stat().st_size > 1e5
    assert len(doc["training"]["history"]) == 2


def test_cli_distill_writes_a_model_and_refuses_to_overwrite(
    featurized, demo, teacher_run, tmp_path
):
    store, _ = featurized
    out = tmp_path / "m"
    args = ["distill", store.path, str(demo), "--teacher", str(teacher_run), "--out", str(out)]
    args += ["--weights", "none", "--image-size", "48", "--epochs", "1", "--cells-per-bag", "3"]
    args += ["--lambda-emb", "0", "--device", "cpu", "--quiet"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "config.json").is_file() and "kd" in r.output and "emb" not in r.output
    doc = json.loads((out / "config.json").read_text())
    assert doc["training"]["cells_per_bag"] == 3 and doc["encoder"]["image_size"] == 48
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "already there" in r.output
    bad = ["distill", store.path, str(demo), "--teacher", str(tmp_path / "x"), "--out", str(out)]
    r = CliRunner().invoke(app, [*bad, "--force"])
    assert isinstance(r.exception, DistillError) and "teacher run folder not found" in str(
        r.exception
    )


def test_training_patients_table(cohort):
    pids, labels = training_patients(cohort.patients)
    train = cohort.patients[cohort.patients["split"] == "train"]
    assert pids == list(train["patient_id"])
    assert list(labels) == list(train["label"].astype(int))
    assert isinstance(cohort.patients, pd.DataFrame)
