"""MAE pretraining: masking, loss decrease, resumable checkpoints, a plain timm encoder."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from _adapt_helpers import demo_cohort
from safetensors.torch import load_file
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.core.pixels import normalize
from cellbag.featurize.mae import MaskedAutoencoder, patchify, pretrain_mae
from cellbag.featurize.training import CellImages, TrainingError, cohort_cells

torch.set_num_threads(2)
MODEL = "vit_tiny_patch16_224"
SIZE = 32


def tiny_mae(size: int = 64, seed: int = 0) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    enc = timm.create_model(MODEL, pretrained=False, num_classes=0, img_size=size)
    return MaskedAutoencoder(enc, decoder_dim=64, decoder_depth=1, decoder_heads=4)


def test_masking_and_loss_on_masked_patches_only():
    mae = tiny_mae(64)
    x = torch.randn(2, 3, 64, 64)
    g = torch.Generator().manual_seed(0)
    ids_keep, mask, ids_restore = mae.random_masking(2, 0.75, g, x.device)
    assert ids_keep.shape == (2, 4) and mask.sum(1).tolist() == [12.0, 12.0]
    latent = mae.forward_encoder(x, ids_keep)
    assert latent.shape == (2, 1 + 4, mae.encoder.embed_dim)  # CLS + visible patches
    pred = mae.forward_decoder(latent, ids_restore)
    assert pred.shape == (2, 16, 16 * 16 * 3)
    # changing predictions of visible patches does not change the loss
    changed = pred.clone()
    changed[mask == 0] += 5.0
    torch.testing.assert_close(mae.loss(x, pred, mask), mae.loss(x, changed, mask))
    assert patchify(x, 16).shape == (2, 16, 768)


def test_mae_loss_decreases_on_demo_cells():
    cells = cohort_cells(demo_cohort(), splits=("train",))
    ds = CellImages(cells.iloc[:36], 64)
    imgs = normalize(torch.stack([ds[i][0] for i in range(len(ds))]), (0.5,) * 3, (0.5,) * 3)
    mae = tiny_mae(64)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(30):
        batch = imgs[(step % 3) * 12 : (step % 3 + 1) * 12]
        loss, _, _ = mae(batch, 0.75, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])
    assert last < 0.8 * first, (first, last)


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """One CLI run: 2 epochs of a tiny ViT at 32 px on the demo training cells."""
    out = tmp_path_factory.mktemp("mae") / "ckpt"
    args = ["pretrain-mae", str(demo_cohort()), "--encoder", MODEL, "--weights", "none"]
    args += ["--epochs", "2", "--batch-size", "16", "--image-size", str(SIZE), "--base-lr", "1e-2"]
    args += ["--out", str(out), "--quiet", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_cli_writes_a_plain_timm_encoder(mae_run):
    out, output = mae_run
    assert "encoder.safetensors" in output and "--weights" in output
    sd = load_file(str(out / "encoder.safetensors"))
    model = timm.create_model(MODEL, pretrained=False, num_classes=0, img_size=SIZE)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # at the default 224 px, timm's own filter resamples the position embedding
    from timm.models.vision_transformer import checkpoint_filter_fn

    full = timm.create_model(MODEL, pretrained=False, num_classes=0)
    full.load_state_dict(checkpoint_filter_fn(dict(sd), full), strict=True)


def test_only_training_split_by_default(mae_run):
    import json

    out, _ = mae_run
    summary = json.loads((out / "mae.json").read_text())
    n_train = len(cohort_cells(demo_cohort(), splits=("train",)))
    assert summary["n_images"] == n_train and summary["splits"] == ["train"]
    assert summary["finished"] and summary["epochs_done"] == 2
    assert summary["global_step"] == 2 * (n_train // 16)
    # whose cells shaped it: in mae.json and in the encoder file, which carries it to the
    # store (cv then marks figures on these patients as transductive)
    from safetensors import safe_open

    from cellbag.featurize import create_encoder

    train = cohort_cells(demo_cohort(), splits=("train",))
    ids = sorted(train["patient_id"].astype(str).unique())
    assert summary["image_patients"] == ids
    with safe_open(str(out / "encoder.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["cellbag_image_patients"]) == ids
    enc = create_encoder(MODEL, weights=str(out / "encoder.safetensors"), image_size=SIZE)
    assert enc.metadata["image_patients"] == ids and enc.metadata["label_patients"] is None


def test_checkpoint_reaches_the_featurizer_and_changes_embeddings(mae_run):
    from cellbag.featurize import create_encoder

    out, _ = mae_run
    weights = out / "encoder.safetensors"
    trained = create_encoder(MODEL, weights=str(weights), image_size=SIZE)
    random = create_encoder(MODEL, weights="none", image_size=SIZE)
    assert trained.id != random.id
    sd = load_file(str(weights))
    own = trained.model.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "pos_embed", "cls_token", "norm.weight"):
        torch.testing.assert_close(own[key].float(), sd[key].float())  # weights reached the model
    from PIL import Image

    cells = cohort_cells(demo_cohort(), splits=("train",)).path.tolist()[:4]
    imgs = [Image.open(p) for p in cells]
    a, b = trained.embed(imgs), random.embed(imgs)
    assert a.shape == b.shape == (4, 192)
    assert np.abs(a - b).max() > 1e-3


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, mae_run):
    ref, _ = mae_run
    kw = dict(model=MODEL, weights="none", epochs=2, batch_size=16, image_size=SIZE)
    kw |= dict(progress=False, device="cpu", base_lr=1e-2)
    part = pretrain_mae(demo_cohort(), tmp_path / "ckpt", max_steps=5, **kw)
    assert not part["finished"] and part["global_step"] == 5
    done = pretrain_mae(demo_cohort(), tmp_path / "ckpt", **kw)
    n_train = len(cohort_cells(demo_cohort(), splits=("train",)))
    assert done["finished"] and done["global_step"] == 2 * (n_train // 16)
    a = load_file(str(ref / "encoder.safetensors"))
    b = load_file(str(tmp_path / "ckpt" / "encoder.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(TrainingError, match="other settings"):
        pretrain_mae(demo_cohort(), tmp_path / "ckpt", **(kw | {"image_size": 48}))


def test_max_seconds_stops_cleanly_and_resumes(tmp_path):
    """A time-boxed run stops after the step that spends its budget, saves the checkpoint
    and the encoder, says why it stopped, and the same command without it finishes."""
    import json

    out = tmp_path / "ckpt"
    args = ["pretrain-mae", str(demo_cohort()), "--encoder", MODEL, "--weights", "none"]
    args += ["--epochs", "2", "--batch-size", "16", "--image-size", str(SIZE), "--base-lr", "1e-2"]
    args += ["--out", str(out), "--quiet", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--max-seconds", "0.001"])
    assert result.exit_code == 0, result.output
    assert "stopped after the 0.001 s budget (1 steps" in " ".join(result.output.split())
    s = json.loads((out / "mae.json").read_text())
    assert s["global_step"] == s["steps_now"] == 1 and not s["finished"]
    assert s["stopped_by"] == "max_seconds" and s["loop_seconds"] > 0
    assert (out / "checkpoint.safetensors").is_file() and (out / "encoder.safetensors").is_file()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    s = json.loads((out / "mae.json").read_text())
    n_train = len(cohort_cells(demo_cohort(), splits=("train",)))
    assert s["finished"] and s["stopped_by"] is None
    assert s["global_step"] == 2 * (n_train // 16) and s["steps_now"] == s["global_step"] - 1
    with pytest.raises(TrainingError, match="max seconds"):
        pretrain_mae(demo_cohort(), tmp_path / "z", model=MODEL, weights="none", max_seconds=0)


def test_include_test_is_opt_in(tmp_path):
    kw = dict(model=MODEL, weights="none", epochs=1, batch_size=8, image_size=SIZE)
    s = pretrain_mae(
        demo_cohort(), tmp_path / "t", include_test=True, max_steps=1, progress=False, **kw
    )
    every = cohort_cells(demo_cohort(), splits=("train", "test"))
    assert s["n_images"] == len(every) and s["transductive"]
    assert s["image_patients"] == sorted(every["patient_id"].astype(str).unique())
    # the test split alone: the patients cv scores stay new to the encoder
    s = pretrain_mae(
        demo_cohort(), tmp_path / "o", test_only=True, max_steps=1, progress=False, **kw
    )
    test = cohort_cells(demo_cohort(), splits=("test",))
    assert s["n_images"] == len(test) and s["splits"] == ["test"]
    assert s["image_patients"] == sorted(test["patient_id"].astype(str).unique())
    with pytest.raises(TrainingError, match="one of --include-test and --test-only"):
        pretrain_mae(demo_cohort(), tmp_path / "x", include_test=True, test_only=True, **kw)
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_bad_inputs(tmp_path):
    with pytest.raises(TrainingError, match="mask ratio"):
        pretrain_mae(demo_cohort(), tmp_path / "x", model=MODEL, weights="none", mask_ratio=1.0)
    with pytest.raises(TrainingError, match="batch size"):
        pretrain_mae(demo_cohort(), tmp_path / "y", model=MODEL, weights="none", batch_size=10_000)
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    with pytest.raises(TrainingError, match="needs a timm ViT"):
        MaskedAutoencoder(cnn)


class _Payload:
    """A pickle that would create ``marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["checkpoint.safetensors", "checkpoint.pt"])
def test_a_crafted_checkpoint_runs_no_code(tmp_path, name):
    import pickle

    out, marker = tmp_path / "ckpt", tmp_path / "pwned"
    out.mkdir()
    (out / name).write_bytes(pickle.dumps({"config": _Payload(marker)}))
    kw = dict(model=MODEL, weights="none", epochs=1, batch_size=10_000, image_size=SIZE)
    with pytest.raises(TrainingError, match="unreadable checkpoint|batch size"):
        pretrain_mae(demo_cohort(), out, progress=False, device="cpu", **kw)
    assert not marker.exists()
