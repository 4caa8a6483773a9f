"""What a weights file written by cellbag records of its training (whose images, whose
labels), read back as data when a model is built from it."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from cellbag.core.io import save_safetensors
from cellbag.featurize import create_encoder
from cellbag.featurize.errors import EncoderError, WeightsError
from cellbag.featurize.weights import file_provenance

MODEL = "vit_tiny_patch16_224"
SIZE = 32


def weights_file(path, **metadata):
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=0, img_size=SIZE)
    save_safetensors(model.state_dict(), path, format="timm", **metadata)
    return path


def test_the_record_reaches_the_encoder_metadata(tmp_path):
    ids = ["P1", "P2"]
    f = weights_file(tmp_path / "w.safetensors", cellbag_image_patients=json.dumps(ids))
    assert file_provenance(f) == {"image_patients": ids}
    enc = create_encoder(MODEL, weights=str(f), image_size=SIZE)
    assert enc.metadata["image_patients"] == ids and enc.metadata["label_patients"] is None
    # a file without a record (anyone's weights) records nobody
    plain = weights_file(tmp_path / "plain.safetensors")
    assert file_provenance(plain) == {}
    enc = create_encoder(MODEL, weights=str(plain), image_size=SIZE)
    assert enc.metadata["image_patients"] is None
    torch.save(
        timm.create_model(MODEL, num_classes=0, img_size=SIZE).state_dict(), tmp_path / "w.pt"
    )
    assert file_provenance(tmp_path / "w.pt") == {}


@pytest.mark.parametrize("raw", ["P1,P2", json.dumps({"P1": 1}), json.dumps([1, 2])])
def test_a_malformed_record_is_one_line(tmp_path, raw):
    f = weights_file(tmp_path / "w.safetensors", cellbag_label_patients=raw)
    with pytest.raises(WeightsError, match="cellbag_label_patients record is not a list"):
        file_provenance(f)
    with pytest.raises((WeightsError, EncoderError)) as e:
        create_encoder(MODEL, weights=str(f), image_size=SIZE)
    assert "\n" not in str(e.value) and str(f) in str(e.value)
