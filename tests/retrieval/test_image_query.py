"""Queries by image, embedded with the store's own encoder (a small real CNN, 64 px)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cellbag.errors import CellbagError
from cellbag.featurize import run_featurize
from cellbag.retrieval import RetrievalError, RetrievalWarning, Retriever, neighbors


def first_cell(store):
    return store.cells().iloc[0]


@pytest.fixture(scope="module")
def retriever(real_store_path):
    from cellbag.store import Store

    return Retriever(Store.open(real_store_path))


def test_a_cells_own_image_finds_that_cell_first(retriever):
    cell = first_cell(retriever.store)
    df = retriever.query(image=cell["path"], k=5)
    assert df["cell_id"].iloc[0] == cell["cell_id"]
    assert df["similarity"].iloc[0] == pytest.approx(1.0, abs=5e-3)  # float16 storage
    assert df.attrs["query"]["patient_id"] == cell["patient_id"]  # known: it is a store cell


def test_rgba_and_grayscale_files_work(retriever, tmp_path):
    cell = first_cell(retriever.store)
    rgb = Image.open(cell["path"]).convert("RGB")
    rgba = rgb.convert("RGBA")
    rgba.save(tmp_path / "opaque.png")
    half = rgba.copy()
    half.putalpha(128)
    half.save(tmp_path / "translucent.png")
    rgb.convert("L").save(tmp_path / "gray.png")
    gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")  # mode I;16
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")

    opaque = retriever.query(image=tmp_path / "opaque.png", k=3)
    assert opaque["cell_id"].iloc[0] == cell["cell_id"]  # same pixels as the stored cell
    for name in ("translucent.png", "gray.png", "gray16.png"):
        df = retriever.query(image=tmp_path / name, k=4)
        assert len(df) == 4 and np.isfinite(df["similarity"]).all(), name
        assert df.attrs["query"]["patient_id"] is None
    # 8- and 16-bit grayscale of the same picture embed the same
    g8 = retriever.query(image=tmp_path / "gray.png", k=4)
    g16 = retriever.query(image=tmp_path / "gray16.png", k=4)
    assert g8["cell_id"].tolist() == g16["cell_id"].tolist()
    np.testing.assert_allclose(g8["similarity"], g16["similarity"], atol=1e-3)


def test_pil_image_query(retriever):
    cell = first_cell(retriever.store)
    with Image.open(cell["path"]) as img:
        df = retriever.query(image=img.convert("LA"), k=2)
    assert len(df) == 2


def test_other_patients_needs_a_known_patient_for_a_new_image(retriever, tmp_path):
    cell = first_cell(retriever.store)
    df = retriever.query(image=cell["path"], k=5, other_patients=True)
    assert cell["patient_id"] not in set(df["patient_id"])
    Image.open(cell["path"]).save(tmp_path / "new.png")
    with pytest.raises(RetrievalError, match="needs the query's patient: image .*new.png"):
        retriever.query(image=tmp_path / "new.png", other_patients=True)


def test_not_an_image_is_a_clear_error(retriever, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    with pytest.raises(RetrievalError, match=f"image {bad} cannot be read"):
        retriever.query(image=bad)


def test_an_encoder_that_no_longer_matches_the_store_is_an_error(real_store):
    eid = real_store.encoders()[0]
    # the recorded weights changed: the encoder rebuilt from metadata gets another id
    real_store.update_encoder_attrs(eid, weights="package:efficientnet-lite0")
    with pytest.raises(CellbagError, match=eid):
        neighbors(real_store, eid, image=first_cell(real_store)["path"], k=2)


def test_refeaturize_with_force_makes_the_index_stale(real_store, cohort):
    eid = real_store.encoders()[0]
    cell_id = first_cell(real_store)["cell_id"]
    neighbors(real_store, eid, cell_id=cell_id, k=2)  # builds the index
    from cellbag.featurize import create_encoder

    enc = create_encoder("tf_efficientnet_lite0", weights="none", image_size=64)
    assert enc.id == eid
    run_featurize(cohort, real_store.path, enc, force=True, device="cpu", workers=1)
    from cellbag.store import Store

    store = Store.open(real_store.path)
    with pytest.warns(RetrievalWarning, match="stale.*re-featurized"):
        df = neighbors(store, eid, cell_id=cell_id, k=2)
    assert df["cell_id"].iloc[0] == cell_id
