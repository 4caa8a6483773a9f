"""Encoder registry: identity, weight sources (package, file, hub offline), transforms."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cellbag.errors import CellbagError
from cellbag.featurize import (
    EncoderError,
    WeightsError,
    create_encoder,
    encoder_from_metadata,
    list_presets,
)
from cellbag.featurize.images import decode_file, prepare, to_rgb
from cellbag.featurize.weights import map_in_order, read_state_dict


@pytest.fixture(scope="module")
def lite0_package():
    return create_encoder("tf_efficientnet_lite0", image_size=224)


def test_identity_changes_with_weights_and_size_only(tiny_encoder, lite0_package) -> None:
    same = create_encoder("tf_efficientnet_lite0", weights="none", image_size=48, precision="bf16")
    assert same.id == tiny_encoder.id  # precision, a rebuild: same numbers, same id
    other_size = create_encoder("tf_efficientnet_lite0", weights="none", image_size=64)
    assert other_size.id != tiny_encoder.id
    assert lite0_package.id != create_encoder("tf_efficientnet_lite0", weights="none").id
    assert lite0_package.id.startswith("tf_efficientnet_lite0-") and len(lite0_package.id) == 30
    assert lite0_package.metadata["weights"] == "package:efficientnet-lite0"
    assert lite0_package == lite0_package and lite0_package.dim == 1280


def test_default_encoder_is_the_offline_package(lite0_package) -> None:
    enc = create_encoder()
    assert enc.id == lite0_package.id and enc.metadata["weights"] == "package:efficientnet-lite0"


def test_package_weights_see_a_cat(lite0_package, tiny_encoder) -> None:
    from skimage.data import chelsea

    img = Image.fromarray(chelsea())  # a tabby cat
    x = lite0_package.transform(img)[None]
    assert x.shape == (1, 3, 224, 224)
    with torch.inference_mode():
        top5 = lite0_package.model(x).softmax(-1)[0].topk(5).indices.tolist()
    assert {281, 282, 283, 284, 285} & set(top5), top5  # ImageNet cat classes
    assert top5[0] in (281, 282, 285)
    pretrained = lite0_package.embed([img])
    random = create_encoder("tf_efficientnet_lite0", weights="none").embed([img])
    assert pretrained.shape == random.shape == (1, 1280)
    a, b = pretrained[0], random[0]
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert not np.allclose(pretrained, random, atol=1e-2) and cos < 0.95


def test_package_mapping_checks_pairwise_shapes() -> None:
    a = {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(2)}
    b = {"y.weight": torch.zeros(2, 3), "y.bias": torch.zeros(2)}
    assert list(map_in_order(a, b, "f")) == ["y.weight", "y.bias"]
    with pytest.raises(WeightsError, match="does not map onto"):
        map_in_order(a, {"y.weight": torch.zeros(3, 3), "y.bias": torch.zeros(2)}, "f")
    with pytest.raises(WeightsError, match="does not map onto"):
        map_in_order(a, {"y.bias": torch.zeros(2, 3), "y.weight": torch.zeros(2)}, "f")
    with pytest.raises(WeightsError, match="1 tensors"):
        map_in_order({"x.weight": torch.zeros(1)}, b, "f")


def test_local_file_weights(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(f))
    enc = create_encoder("vit_tiny_patch16_224", weights=str(f), image_size=32)
    x = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.inference_mode():
        want = model.eval()(enc._normalize(x))
    torch.testing.assert_close(enc.forward_pixels(x), want)
    assert enc.metadata["weights"] == str(f.resolve()) and enc.metadata["weights_file"]
    none = create_encoder("vit_tiny_patch16_224", weights="none", image_size=32)
    assert none.id != enc.id
    # the same tensors in a DINO-style wrapper load to the same id and numbers
    g = tmp_path / "wrapped.pth"
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    sd["dino_head.mlp.0.weight"] = torch.zeros(4, 4)
    torch.save({"teacher": sd, "epoch": 3}, g)
    enc2 = create_encoder("vit_tiny_patch16_224", weights=str(g), image_size=32)
    torch.testing.assert_close(enc2.forward_pixels(x), want)
    assert enc2.id != enc.id  # another file (digest of bytes), though the same numbers


def test_dinobloom_style_checkpoint(tmp_path: Path) -> None:
    """DinoBloom ships DINOv2-format checkpoints at 224 px ({'teacher': {'backbone.*'}})."""
    import timm

    torch.manual_seed(1)
    model = timm.create_model("vit_small_patch14_dinov2", img_size=224)
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    sd["backbone.mask_token"] = torch.zeros(1, 384)
    f = tmp_path / "DinoBloom-S.pth"
    torch.save({"teacher": sd}, f)
    enc = create_encoder("dinobloom_s", weights=str(f), image_size=28)  # pos-embed resampled
    assert enc.dim == 384 and enc.embed([Image.new("RGB", (50, 50), "white")]).shape == (1, 384)
    with pytest.raises(EncoderError, match="dinobloom_s needs a local weights file"):
        create_encoder("dinobloom_s")


def test_bad_weight_sources(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth: cannot read weights"):
        create_encoder("vit_tiny_patch16_224", weights=str(bad), image_size=32)
    with pytest.raises(EncoderError, match="missing.safetensors: weights file not found"):
        create_encoder("resnet18", weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(EncoderError, match="unknown weight source 'imagenet'"):
        create_encoder("resnet18", weights="imagenet")
    with pytest.raises(WeightsError, match="does not fit resnet18"):
        create_encoder("resnet18", weights="package:efficientnet-lite0")
    with pytest.raises(EncoderError, match="unknown encoder 'resnet_nope'"):
        create_encoder("resnet_nope")
    with (
        pytest.raises(EncoderError, match="no CUDA GPU")
        if not torch.cuda.is_available()
        else pytest.raises(Exception)
    ):
        create_encoder("resnet18", weights="none", device="cuda")
    empty = tmp_path / "empty.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(empty))
    assert list(read_state_dict(empty)) == ["a"]
    with pytest.raises(WeightsError, match="weights do not fit .*keys do not match"):
        create_encoder("vit_tiny_patch16_224", weights=str(empty), image_size=32)


def test_hub_fails_fast_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        create_encoder("vit_tiny_patch16_224", image_size=32)  # preset default: hub
    assert time.monotonic() - t < 10
    # online but unreachable: a closed local port stands in for "no network"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t = time.monotonic()
    with pytest.raises(WeightsError, match="cannot reach 127.0.0.1"):
        create_encoder("vit_tiny_patch16_224", weights="hub", image_size=32)
    assert time.monotonic() - t < 10
    assert issubclass(WeightsError, CellbagError)


def test_encoder_from_metadata(tiny_encoder, reference_run) -> None:
    info = reference_run.store.encoder_info(reference_run.encoder_id)
    again = encoder_from_metadata(info)
    assert again.id == tiny_encoder.id == info["encoder_id"]
    img = Image.open(reference_run.store.cells()["path"][0])
    np.testing.assert_array_equal(again.embed([img]), tiny_encoder.embed([img]))
    with pytest.raises(EncoderError, match="differs from the store's"):
        encoder_from_metadata(dict(info, encoder_id="tf_efficientnet_lite0-00000000"))


def test_adapter_changes_the_identity(tmp_path: Path) -> None:
    from cellbag.featurize.adapters import add_adapter, save_adapter

    base = create_encoder("vit_tiny_patch16_224", weights="none", image_size=32)
    add_adapter(base.model, "lora", rank=2)
    for name, p in base.model.named_parameters():
        if "adapter_" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter is not the identity
    save_adapter(base.model, tmp_path / "ad")
    plain = create_encoder("vit_tiny_patch16_224", weights="none", image_size=32)
    adapted = create_encoder(
        "vit_tiny_patch16_224", weights="none", image_size=32, adapter=tmp_path / "ad"
    )
    assert adapted.id != plain.id and adapted.metadata["adapter_sha256"]
    x = torch.randint(0, 255, (1, 32, 32, 3), dtype=torch.uint8)
    assert not torch.allclose(adapted.forward_pixels(x), plain.forward_pixels(x))


def test_presets_declare_their_dims() -> None:
    import timm
    from timm.models import get_pretrained_cfg

    names = [p.name for p in list_presets()]
    for want in (
        "tf_efficientnet_lite0",
        "resnet18",
        "resnet50",
        "efficientnet_b0",
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "vit_small_patch14_dinov2",
        "vit_base_patch14_dinov2",
        "dinobloom_s",
        "dinobloom_b",
    ):
        assert want in names
    for p in list_presets():
        if p.model == "morphometry":  # no network: its dim is its feature count
            assert p.dim == create_encoder("morphometry").dim
            continue
        cfg = get_pretrained_cfg(p.model)
        kw = {"img_size": p.image_size} if cfg and cfg.fixed_input_size else {}
        with torch.device("meta"):
            m = timm.create_model(p.model, **kw)
        assert int(getattr(m, "head_hidden_size", None) or m.num_features) == p.dim, p.name


def test_images_of_any_mode_become_rgb() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    gray = Image.new("L", (7, 9), 100)
    assert to_rgb(gray).getpixel((0, 0)) == (100, 100, 100)
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (5, 5))
    assert to_rgb(pal).mode == "RGB"
    cmyk = Image.new("CMYK", (5, 5))
    assert prepare(cmyk, 12).shape == (12, 12, 3)
    assert prepare(Image.new("RGB", (37, 53)), 24).shape == (24, 24, 3)


def test_decode_file_reports_bad_files(tmp_path: Path) -> None:
    trunc = tmp_path / "t.jpg"
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.jpg")
    trunc.write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    d = decode_file(trunc, 32)
    assert d.pixels is None and d.reason.startswith("unreadable image") and d.sha256
    d = decode_file(tmp_path / "gone.jpg", 32)
    assert d.pixels is None and d.reason.startswith("cannot read file")
    d = decode_file(tmp_path / "ok.jpg", 32)
    assert d.pixels.shape == (32, 32, 3) and d.reason == ""
    assert os.path.exists(tmp_path / "ok.jpg")
