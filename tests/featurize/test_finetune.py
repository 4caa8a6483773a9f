"""Instance-level fine-tuning: patient split, probe vs fine-tuned figures, re-featurize."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import timm
import torch
from _adapt_helpers import demo_cohort, witness_cohort
from safetensors.torch import load_file
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.featurize.finetune import finetune, split_patients
from cellbag.featurize.training import TrainingError

torch.set_num_threads(2)
MODEL = "vit_tiny_patch16_224"
SIZE = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`cellbag finetune` with LoRA on a tiny random ViT, 4 epochs at 64 px."""
    out = tmp_path_factory.mktemp("ft") / "ckpt"
    data = witness_cohort(12, 20)
    args = ["finetune", str(data), "--encoder", MODEL, "--weights", "none", "--adapter", "lora"]
    args += ["--option", "rank=8", "--option", "targets=q,v", "--epochs", "4"]
    args += ["--image-size", str(SIZE), "--out", str(out), "--quiet", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return data, out, result.output


def test_finetuning_beats_the_frozen_linear_probe(run):
    _, out, output = run
    m = json.loads((out / "metrics.json").read_text())
    probe, tuned = m["probe_val_balanced_accuracy"], m["finetuned_val_balanced_accuracy"]
    assert f"{probe:.3f}" in output and f"{tuned:.3f}" in output  # both figures reported
    assert 0.5 <= probe < tuned, (probe, tuned)
    assert m["trainable_parameters"] < 0.05 * m["total_parameters"]
    assert m["adapter_options"] == {"rank": 8, "targets": ["q", "v"]}
    assert len(m["history"]) == 4


def test_patients_do_not_cross_the_split(run):
    data, out, _ = run
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    labels = pd.read_csv(data / "trainset" / "trainset_true.csv").set_index("ID")["LABEL"]
    assert set(labels[split["val"]]) == {0, 1} and set(labels[split["train"]]) == {0, 1}


def test_checkpoint_is_a_timm_encoder_plus_adapter(run):
    _, out, _ = run
    sd = load_file(str(out / "encoder.safetensors"))
    model = timm.create_model(MODEL, pretrained=False, num_classes=0, img_size=SIZE)
    model.load_state_dict(sd, strict=True)
    doc = json.loads((out / "adapter.json").read_text())
    assert doc["kind"] == "lora" and doc["base_model"] == MODEL
    assert doc["base_weights"]["file"] == "encoder.safetensors"


def test_refeaturize_with_the_adapted_encoder_adds_a_second_encoder(run, tmp_path):
    from cellbag.store import Store

    data, out, _ = run
    store = tmp_path / "store.zarr"
    base = ["featurize", str(data), str(store), "--encoder", MODEL, "--image-size", str(SIZE)]
    base += ["--quiet", "--device", "cpu", "--batch-size", "64"]
    r1 = CliRunner().invoke(app, [*base, "--weights", str(out / "encoder.safetensors")])
    assert r1.exit_code == 0, r1.output
    adapted = [*base, "--weights", str(out / "encoder.safetensors"), "--adapter", str(out)]
    r2 = CliRunner().invoke(app, adapted)
    assert r2.exit_code == 0, r2.output
    s = Store.open(store)
    ids = s.encoders()
    assert len(ids) == 2
    infos = [s.encoder_info(i) for i in ids]
    assert sorted(bool(i.get("adapter_sha256")) for i in infos) == [False, True]
    pid = s.patients()["patient_id"].iloc[0]
    a, b = (s.bag(pid, i) for i in ids)
    assert a.shape == b.shape and (a != b).any()
    # the adapter needs its own base weights: other weights are refused, naming the fix
    r3 = CliRunner().invoke(app, [*base, "--weights", "none", "--adapter", str(out)])
    assert r3.exit_code != 0
    assert "encoder.safetensors" in str(r3.output) + str(r3.exception)


def test_split_patients_is_stratified_and_checked():
    pats = pd.DataFrame({"patient_id": [f"P{i}" for i in range(10)], "label": [0, 1] * 5})
    tr, va = split_patients(pats, 0.4, seed=1)
    assert not set(tr) & set(va) and len(tr) + len(va) == 10
    assert split_patients(pats, 0.4, seed=1) == (tr, va)
    lab = pats.set_index("patient_id")["label"]
    assert set(lab[va]) == {0, 1}
    with pytest.raises(TrainingError, match="at least 2 per class"):
        split_patients(pats.iloc[:3], 0.3)


def test_bad_inputs(tmp_path):
    with pytest.raises(TrainingError, match="unknown adapter"):
        finetune(demo_cohort(), tmp_path / "x", encoder=MODEL, weights="none", adapter="dora")
    result = CliRunner().invoke(
        app, ["finetune", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"]
    )
    assert result.exit_code != 0


def test_a_full_finetune_records_whose_labels_trained_it(run, tmp_path):
    """`--adapter none` trains every encoder weight on the training patients' labels: its
    weights file says whose, featurizing with it carries that into the encoder metadata,
    where `cv` and `fit` refuse to score those patients (tests/aggregate/test_nested.py).
    With an adapter the weights file is the frozen base and records nobody."""
    from safetensors import safe_open

    from cellbag.featurize import create_encoder

    data, tuned, _ = run
    with safe_open(str(tuned / "encoder.safetensors"), "pt") as f:
        assert "cellbag_label_patients" not in (f.metadata() or {})
    out = tmp_path / "full"
    finetune(data, out, encoder=MODEL, weights="none", adapter="none", epochs=1,
             image_size=SIZE, batch_size=16, device="cpu", progress=False)  # fmt: skip
    train = sorted(json.loads((out / "split.json").read_text())["train"])
    with safe_open(str(out / "encoder.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["cellbag_label_patients"]) == train
    assert json.loads(meta["cellbag_image_patients"]) == train
    enc = create_encoder(MODEL, weights=str(out / "encoder.safetensors"), image_size=SIZE)
    assert enc.metadata["label_patients"] == train == enc.metadata["image_patients"]
