"""The deployable student: predict-images equals featurize-then-predict, it loads offline in
a fresh process, and the CLI writes a submission."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.distill import (
    DistillError,
    export_encoder,
    load_student,
    predict_images,
)


def test_predict_images_equals_featurize_then_predict(trained, cohort, tmp_path):
    from cellbag.featurize import create_encoder, run_featurize
    from cellbag.store import Store

    student = load_student(trained.out)
    table = predict_images(student, cohort, split="all")
    assert list(table["patient_id"]) == list(cohort.patients["patient_id"])
    assert (table["n_cells"].to_numpy() == np.diff(cohort.offsets())).all()
    # the student's encoder, exported and loaded by the encoder registry
    weights, adapter = export_encoder(trained.out, tmp_path / "enc")
    assert adapter is None
    enc = create_encoder("tf_efficientnet_lite0", weights=str(weights), image_size=64)
    pid = str(cohort.patients["patient_id"].iloc[0])
    paths = cohort.cells.loc[cohort.cells["patient_id"] == pid, "path"]
    images = [Image.open(p) for p in paths]
    pixels = np.stack([enc.prepare(im) for im in images])
    np.testing.assert_allclose(
        enc.embed(images), student.embed(pixels).numpy(), rtol=1e-4, atol=1e-5
    )
    # featurize into a store (float16), then the student's head on the stored bags
    rep = run_featurize(cohort, tmp_path / "s.zarr", enc, device="cpu", workers=1)
    store = Store.open(tmp_path / "s.zarr")
    bags = store.bags(rep.encoder_id, list(cohort.patients["patient_id"]))
    probs, weights_ = student.predict_bags(bags, student.clinical(cohort.patients))
    np.testing.assert_allclose(probs, table["probability"].to_numpy(), atol=2e-3)
    assert all(w.sum() == pytest.approx(1.0) for w in weights_)
    # and exactly equal on float32 embeddings of the same cells
    emb = student.embed(pixels)
    p32, _ = student.predict_bags([emb], student.clinical(cohort.patients.iloc[:1]))
    assert p32[0] == pytest.approx(float(table["probability"].iloc[0]), abs=1e-6)


def test_model_dir_loads_in_a_fresh_offline_process(trained, demo):
    in_process = predict_images(trained.out, demo, split="all")
    code = textwrap.dedent(
        f"""
        import json, sys
        import torch
        torch.set_num_threads(1)
        from cellbag.distill import predict_images
        t = predict_images({str(trained.out)!r}, {str(demo)!r}, split="all")
        print(json.dumps(dict(zip(t["patient_id"], t["probability"]))))
        assert "cellbag.featurize.pipeline" not in sys.modules
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    fresh = json.loads(r.stdout.strip().splitlines()[-1])
    for pid, p in zip(in_process["patient_id"], in_process["probability"], strict=True):
        assert fresh[pid] == pytest.approx(p, abs=1e-6)


def test_cli_predict_images_writes_submission_and_probabilities(trained, demo, cohort, tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    r = CliRunner().invoke(app, ["predict-images", str(trained.out), str(demo), "--out", str(out)])
    assert r.exit_code == 0, r.output
    sub = pd.read_csv(out, dtype={"Id": str})
    test_ids = list(cohort.patients.loc[cohort.patients["split"] == "test", "patient_id"])
    assert list(sub.columns) == ["Id", "Predicted"] and list(sub["Id"]) == test_ids
    assert set(sub["Predicted"]) <= {0, 1}
    probs = pd.read_csv(tmp_path / "sub" / "submission_proba.csv", dtype={"Id": str})
    assert list(probs["Id"]) == test_ids and probs["Probability"].between(0, 1).all()
    assert (sub["Predicted"] == (probs["Probability"] >= 0.5).astype(int)).all()
    for pid in test_ids:
        assert pid in r.output


def test_bad_model_dirs_give_one_line_errors(trained, tmp_path):
    with pytest.raises(DistillError, match="not found"):
        load_student(tmp_path / "nope")
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text((trained.out / "config.json").read_text())
    with pytest.raises(DistillError, match="weights.safetensors: missing"):
        load_student(d)
    (d / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(DistillError, match="unreadable weights"):
        load_student(d)
    (d / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DistillError, match="not a cellbag student"):
        load_student(d)
    r = CliRunner().invoke(app, ["predict-images", str(tmp_path / "nope"), str(tmp_path)])
    assert isinstance(r.exception, DistillError)
    assert "\n" not in str(r.exception)


def test_unreadable_image_is_skipped_with_a_warning(trained, tmp_path):
    import shutil

    from cellbag.data import read_cohort
    from cellbag.data.demo import make_demo_cohort

    root = make_demo_cohort(tmp_path / "d", patients=4, cells_per_patient=3, seed=5)
    c = read_cohort(root)
    bad = c.cells["path"].iloc[-1]
    with open(bad, "wb") as fh:
        fh.write(b"not a jpeg")
    with pytest.warns(UserWarning, match="skipped"):
        t = predict_images(trained.out, root, split="all")
    assert int(t["n_cells"].sum()) == len(c.cells) - 1
    pid = c.cells["patient_id"].iloc[-1]
    for p in c.cells.loc[c.cells["patient_id"] == pid, "path"]:
        with open(p, "wb") as fh:
            fh.write(b"broken")
    with (
        pytest.warns(UserWarning),
        pytest.raises(DistillError, match=f"patient {pid} has no readable"),
    ):
        predict_images(trained.out, root, split="all")
    shutil.rmtree(root)


def test_lora_student_round_trips_through_its_model_dir(featurized, cohort, teacher_run, tmp_path):
    from cellbag.distill import DistillConfig, distill, read_teacher
    from cellbag.distill.train import training_patients

    store, _ = featurized
    pids, _ = training_patients(cohort.patients)
    teacher = read_teacher(teacher_run, store, pids)
    cfg = DistillConfig(
        student="vit_tiny_patch16_224",
        weights="none",
        image_size=32,
        adapter="lora",
        epochs=1,
        cells_per_bag=3,
        bags_per_step=4,
        device="cpu",
        lr=1e-2,
    )
    res = distill(store, cohort, teacher, cfg, out=tmp_path / "vit", max_steps=2)
    loaded = load_student(tmp_path / "vit")
    assert loaded.config["encoder"]["adapter"]["kind"] == "lora"
    a = {k: v for k, v in res.model.state_dict().items() if not k.startswith("projection.")}
    b = loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lora = [k for k in a if "adapter_lora" in k]
    assert lora and any(a[k].abs().sum() > 0 for k in lora if ".b_" in k)
    # the adapter exports as a folder the featurizer loads
    weights, adapter = export_encoder(tmp_path / "vit", tmp_path / "enc")
    assert adapter is not None and (adapter / "adapter.json").is_file()
