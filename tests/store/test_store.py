"""The Zarr feature store: layout, tables, bags, completeness, errors, fsspec URLs."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cellbag.errors import CellbagError
from cellbag.store import (
    EncoderNotReady,
    Store,
    StoreError,
    block_range,
    chunks_for_rank,
    n_blocks,
)


@pytest.fixture()
def store(tmp_path: Path, store_cohort, fake_embeddings) -> Store:
    s = Store.create(tmp_path / "s.zarr", store_cohort, chunk_rows=4, block_rows=8)
    s.add_embeddings("fake-0001", fake_embeddings, {"name": "fake"})
    return s


def test_tables_match_cohort(store: Store, store_cohort) -> None:
    p = store.patients()
    assert list(p["patient_id"]) == list(store_cohort.patients["patient_id"])
    assert list(p["split"]) == list(store_cohort.patients["split"])
    assert p["label"].dtype == "Int64"
    assert p["label"].isna().tolist() == store_cohort.patients["label"].isna().tolist()
    pd.testing.assert_series_equal(
        p["dob"], pd.to_datetime(store_cohort.patients["dob"]), check_names=False
    )
    np.testing.assert_allclose(p["lymph_count"], store_cohort.patients["lymph_count"])
    assert list(p["gender"]) == list(store_cohort.patients["gender"])
    c = store.cells()
    assert list(c["cell_id"]) == list(store_cohort.cells["cell_id"])
    assert list(c["path"]) == list(store_cohort.cells["path"])
    assert set(c["status"]) == {"ok"}
    np.testing.assert_array_equal(store.offsets, store_cohort.offsets())
    assert p["n_cells"].sum() == store.n_cells


def test_bag_is_the_patients_slice(store: Store, fake_embeddings) -> None:
    half = fake_embeddings.astype(np.float16).astype(np.float32)
    for i, pid in enumerate(store.patients()["patient_id"]):
        a, b = store.offsets[i], store.offsets[i + 1]
        bag = store.bag(pid, "fake-0001")
        assert bag.dtype == np.float32 and bag.shape == (b - a, 12)
        np.testing.assert_array_equal(bag, half[a:b])
        cells = store.bag_cells(pid)
        assert (cells["patient_id"] == pid).all() and len(cells) == b - a
    bags = store.bags("fake-0001")
    assert len(bags) == len(store.patients())
    for pid, bag in zip(store.patients()["patient_id"], bags, strict=True):
        np.testing.assert_array_equal(bag, store.bag(pid, "fake-0001"))
    pids = list(store.patients()["patient_id"])[::-2]
    for pid, bag in zip(pids, store.bags("fake-0001", pids), strict=True):
        np.testing.assert_array_equal(bag, store.bag(pid, "fake-0001"))


def test_unreadable_cells_are_left_out_of_bags(store: Store, fake_embeddings) -> None:
    a, b = store.block_range(0)
    status = np.zeros(b - a, np.uint8)
    status[[1, 3]] = 1
    reason = [""] * (b - a)
    reason[1] = reason[3] = "unreadable image: broken"
    store.write_block("fake-0001", 0, fake_embeddings[a:b], status=status, reason=reason)
    pid = store.patients()["patient_id"][0]
    n = store.offsets[1]
    full = store.bag(pid, "fake-0001", only_ok=False)
    assert full.shape[0] == n and np.isnan(full[[1, 3]]).all()
    ok = store.bag(pid, "fake-0001")
    assert ok.shape[0] == n - 2 and np.isfinite(ok).all()
    cells = store.bag_cells(pid)
    assert len(cells) == n - 2 and (cells["status"] == "ok").all()
    bad = Store.open(store.path).problems()
    assert list(bad["reason"]) == ["unreadable image: broken"] * 2
    assert list(bad["status"]) == ["unreadable"] * 2


def test_plain_zarr_sees_the_documented_layout(store: Store) -> None:
    g = zarr.open_group(store.path, mode="r")
    assert g.attrs["format"] == "cellbag-store" and g.attrs["format_version"] == 3
    assert {"root", "fingerprint", "clinical_digest", "sources", "n_cells"} <= set(
        g.attrs["cohort"]
    )
    assert set(g.group_keys()) == {"cells", "patients", "embeddings"}
    assert {"cell_id", "patient_id", "path", "status", "reason", "sha256", "size", "mtime_ns"} == (
        set(g["cells"].array_keys())
    )
    assert {"patient_id", "split", "label", "offsets", "dob", "gender", "lymph_count"} <= set(
        g["patients"].array_keys()
    )
    assert list(g["embeddings"].group_keys()) == ["fake-0001"]
    data = g["embeddings/fake-0001/data"]
    assert data.dtype == np.float16 and data.shape == (store.n_cells, 12)
    assert data.chunks == (4, 12)
    assert any("zstd" in type(c).__name__.lower() for c in data.compressors)
    assert any("crc32c" in type(c).__name__.lower() for c in data.compressors)
    status = g["embeddings/fake-0001/status"]  # which cells this encoder embedded
    assert status.dtype == np.uint8 and status.shape == (store.n_cells,)
    done = g["embeddings/fake-0001/done"]
    assert done.dtype == np.uint8 and done.shape == (n_blocks(store.n_cells, 8),)
    assert done[:].all()
    meta = g["embeddings/fake-0001"].attrs
    assert meta["dim"] == 12 and meta["dtype"] == "float16" and meta["completed"]
    assert g["patients/offsets"][-1] == store.n_cells
    assert set(g.attrs["tables_digest"]) == {"patients", "cells"}
    arrays = [(k, a) for k, a in g.members(max_depth=None) if isinstance(a, zarr.Array)]
    assert len(arrays) == 8 + 8 + 3  # cells/, patients/, one encoder
    for key, arr in arrays:  # every array carries a checksum, not only the embeddings
        assert any("crc32c" in type(c).__name__.lower() for c in arr.compressors), key


def test_fsspec_urls(store: Store, store_cohort, fake_embeddings) -> None:
    url = Path(store.path).as_uri()
    s = Store.open(url)
    pid = s.patients()["patient_id"][2]
    np.testing.assert_array_equal(s.bag(pid, "fake-0001"), store.bag(pid, "fake-0001"))
    mem = f"memory://cellbag-test-{uuid.uuid4().hex}/s.zarr"
    m = Store.create(mem, store_cohort)
    m.add_embeddings("fake-0001", fake_embeddings)
    m2 = Store.open(mem)
    assert m2.encoders() == ["fake-0001"]
    np.testing.assert_array_equal(m2.bag(pid, "fake-0001"), store.bag(pid, "fake-0001"))
    assert m2.size_bytes() > 0
    with m2.lock("fake-0001") as lock:
        assert lock.read()["pid"] > 0


def test_missing_and_unfinished_encoders_name_the_command(store: Store, fake_embeddings) -> None:
    with pytest.raises(
        EncoderNotReady,
        match=r"no embeddings for encoder 'resnet18-0000'.*cellbag featurize .* --encoder resnet18",
    ):
        store.bag(store.patients()["patient_id"][0], "resnet18-0000")
    store.init_encoder("half-0002", 12, {"name": "half", "weights": "none"})
    store.write_block("half-0002", 0, fake_embeddings[:8])
    assert not store.is_complete("half-0002")
    assert store.encoder_info("half-0002")["done_blocks"] == 1
    with pytest.raises(
        EncoderNotReady,
        match=r"unfinished \(1/\d+ blocks\).*`cellbag featurize .* --encoder half --weights none`",
    ):
        store.require_complete("half-0002")
    with pytest.raises(CellbagError):
        store.bags("half-0002")
    assert store.encoders() == ["fake-0001", "half-0002"]


def test_digest_changes_on_rewrite(store: Store, fake_embeddings) -> None:
    d0 = store.embeddings_digest("fake-0001")
    assert Store.open(store.path).embeddings_digest("fake-0001") == d0
    store.add_embeddings("fake-0001", fake_embeddings * 2)
    assert store.embeddings_digest("fake-0001") != d0
    assert store.bag(store.patients()["patient_id"][0], "fake-0001")[0, 0] == pytest.approx(
        fake_embeddings[0, 0] * 2, rel=1e-3
    )


def test_bad_inputs_raise_one_line_errors(
    tmp_path: Path, store: Store, store_cohort, fake_embeddings
) -> None:
    with pytest.raises(StoreError, match="already exists"):
        Store.create(store.path, store_cohort)
    with pytest.raises(StoreError, match=r"no feature store here.*cellbag featurize"):
        Store.open(tmp_path / "nowhere.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(StoreError, match="not a cellbag feature store"):
        Store.open(tmp_path / "plain.zarr")
    with pytest.raises(StoreError, match=r"need shape \(\d+, dim\)"):
        store.add_embeddings("x-1", fake_embeddings[:3])
    with pytest.raises(StoreError, match="read-only"):
        Store.open(store.path).add_embeddings("x-1", fake_embeddings)
    with pytest.raises(StoreError, match="no patient 'P0'"):
        store.bag("P0", "fake-0001")
    with pytest.raises(StoreError, match="block 0 .* needs shape"):
        store.write_block("fake-0001", 0, fake_embeddings[:3])
    with pytest.raises(StoreError, match="overflow float16"):
        store.write_block("fake-0001", 0, np.full((8, 12), 1e6, np.float32))
    with pytest.raises(StoreError, match="multiple"):
        Store.create(tmp_path / "odd.zarr", store_cohort, chunk_rows=3, block_rows=8)
    for e in (StoreError, EncoderNotReady):
        assert issubclass(e, CellbagError)


def test_blocks_and_rank_split() -> None:
    assert n_blocks(17, 8) == 3 and block_range(2, 17, 8) == (16, 17)
    with pytest.raises(IndexError):
        block_range(3, 17, 8)
    for world in (1, 2, 3, 5):
        parts = [chunks_for_rank(11, r, world) for r in range(world)]
        flat = sorted(b for p in parts for b in p)
        assert flat == list(range(11))
    with pytest.raises(ValueError):
        chunks_for_rank(4, 2, 2)


def test_store_does_not_import_torch() -> None:
    code = "import sys, cellbag.store; s = cellbag.store.Store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_local_fast_reads_equal_zarr_reads(store: Store, fake_embeddings, tmp_path: Path) -> None:
    from cellbag.store.fastread import LocalRowReader

    # an all-unreadable block: zarr skips writing all-NaN chunks, the reader fills them
    a, b = store.block_range(1)
    store.write_block("fake-0001", 1, fake_embeddings[a:b], status=np.ones(b - a, np.uint8))
    s = Store.open(store.path)
    arr = s.embeddings("fake-0001")
    for lo, hi in [(0, 5), (3, 17), (a, b), (0, s.n_cells), (s.n_cells - 2, s.n_cells)]:
        np.testing.assert_array_equal(
            s._read_rows("fake-0001", lo, hi), arr[lo:hi].astype(np.float32)
        )
    assert s._readers["fake-0001"] is not None  # the fast path was taken
    for pid in s.patients()["patient_id"]:
        np.testing.assert_array_equal(
            s.bag(pid, "fake-0001", only_ok=False), s.bags("fake-0001", [pid], only_ok=False)[0]
        )
    # layouts other than plain row chunks are left to zarr
    assert LocalRowReader.open(Path(store.path) / "cells" / "status") is None
    g = zarr.open_group(tmp_path / "sharded.zarr", mode="w")
    g.create_array("x", shape=(8, 4), dtype="float16", chunks=(2, 4), shards=(4, 4))
    assert LocalRowReader.open(tmp_path / "sharded.zarr" / "x") is None
    assert LocalRowReader.open(tmp_path / "nothing") is None
