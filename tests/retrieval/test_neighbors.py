"""Queries by cell id over a store: self-match, filters, k, staleness, location, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import DIM, FAKE, fake_embeddings

from cellbag.errors import CellbagError
from cellbag.retrieval import (
    RetrievalError,
    RetrievalWarning,
    Retriever,
    StaleIndexError,
    build_index,
    index_dir,
    neighbors,
)
from cellbag.retrieval.query import COLUMNS
from cellbag.store import Store


def test_nearest_neighbour_of_a_cell_is_itself(fake_store):
    build_index(fake_store, FAKE, kind="flat")
    for cell_id in fake_store.cells()["cell_id"].iloc[::7]:
        df = neighbors(fake_store, FAKE, cell_id=cell_id, k=3)
        assert list(df.columns) == COLUMNS
        assert df["cell_id"].iloc[0] == cell_id
        assert df["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-3)
        assert df["rank"].tolist() == [1, 2, 3]
        assert df["similarity"].is_monotonic_decreasing


def test_result_columns_join_patient_split_and_label(fake_store):
    df = neighbors(fake_store, FAKE, cell_id=fake_store.cells()["cell_id"].iloc[0], k=10)
    patients = fake_store.patients().set_index("patient_id")
    cells = fake_store.cells().set_index("cell_id")
    for r in df.itertuples():
        assert r.patient_id == cells.at[r.cell_id, "patient_id"]
        assert r.path == cells.at[r.cell_id, "path"]
        assert r.split == patients.at[r.patient_id, "split"]
        want = patients.at[r.patient_id, "label"]
        assert (pd.isna(r.label) and pd.isna(want)) or r.label == want
    assert str(df["label"].dtype) == "Int64"
    assert df.attrs["query"]["patient_id"] == cells.at[df.attrs["query"]["cell_id"], "patient_id"]


def test_other_patients_excludes_the_query_patient(fake_store):
    cells = fake_store.cells()
    query = cells.iloc[3]
    df = neighbors(fake_store, FAKE, cell_id=query["cell_id"], k=15, other_patients=True)
    assert len(df) == 15
    assert query["patient_id"] not in set(df["patient_id"])
    # and without the filter the same query does find its own patient first
    plain = neighbors(fake_store, FAKE, cell_id=query["cell_id"], k=15)
    assert plain["patient_id"].iloc[0] == query["patient_id"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_split_filter(fake_store, split):
    df = neighbors(
        fake_store, FAKE, cell_id=fake_store.cells()["cell_id"].iloc[0], k=5, split=split
    )
    assert len(df) == 5 and set(df["split"]) == {split}


@pytest.mark.parametrize("split", ["all", "train", "test"])
def test_filters_leave_exactly_the_other_patients_of_the_split(fake_store, split):
    """The combined filter (a split's bitmap minus the patient's run of positions) keeps
    exactly the cells a mask would, and counts them right."""
    from cellbag.retrieval import Retriever

    r = Retriever(fake_store, FAKE)
    cells = fake_store.cells().merge(fake_store.patients()[["patient_id", "split"]])
    for i in (0, len(cells) // 2, len(cells) - 1):  # first, middle and last patient
        pid = cells["patient_id"].iloc[i]
        keep = cells["patient_id"] != pid
        if split != "all":
            keep &= cells["split"] == split
        want = set(cells["cell_id"][keep])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RetrievalWarning)  # k above what matches
            df = r.query(
                cell_id=cells["cell_id"].iloc[i], k=10_000, other_patients=True, split=split
            )
        assert set(df["cell_id"]) == want and len(df) == len(want)


def test_k_larger_than_store_returns_what_exists_with_a_warning(fake_store):
    n = len(fake_store.cells())
    with pytest.warns(RetrievalWarning, match=f"k=1000.*only {n} cells"):
        df = neighbors(fake_store, FAKE, cell_id=fake_store.cells()["cell_id"].iloc[0], k=1000)
    assert len(df) == n and df["cell_id"].is_unique
    pid = fake_store.cells()["patient_id"].iloc[0]
    n_other = int((fake_store.cells()["patient_id"] != pid).sum())
    with pytest.warns(RetrievalWarning, match=f"only {n_other} cells match"):
        df = neighbors(
            fake_store,
            FAKE,
            cell_id=fake_store.cells()["cell_id"].iloc[0],
            k=1000,
            other_patients=True,
        )
    assert len(df) == n_other


def test_index_saved_beside_the_store_records_what_it_was_built_from(fake_store):
    build_index(fake_store, FAKE)
    where = index_dir(fake_store, FAKE)
    store_dir = fake_store_dir(fake_store)
    assert where == store_dir.with_name(store_dir.name + ".indexes") / FAKE
    info = json.loads((where / "index.json").read_text())
    assert info["kind"] == "flat" and info["n"] == len(fake_store.cells())
    assert info["embeddings_digest"] == fake_store.embeddings_digest(FAKE)
    assert info["encoder_id"] == FAKE and info["params"]["kind"] == "flat"
    assert (where / "index.faiss").is_file() and (where / "rows.npy").is_file()
    # the store still opens and reads normally with the index inside it
    again = Store.open(fake_store.path)
    assert again.encoders() == [FAKE]


def fake_store_dir(store):
    from pathlib import Path

    return Path(store.path)


def test_query_builds_a_missing_index(fake_store):
    store_dir = fake_store_dir(fake_store)
    assert not store_dir.with_name(store_dir.name + ".indexes").exists()
    neighbors(fake_store, FAKE, cell_id=fake_store.cells()["cell_id"].iloc[0], k=2)
    assert (index_dir(fake_store, FAKE) / "index.json").is_file()


def test_stale_index_is_rebuilt_with_a_notice_after_rewriting(fake_store):
    cell_id = fake_store.cells()["cell_id"].iloc[5]
    build_index(fake_store, FAKE, kind="flat")
    before = neighbors(fake_store, FAKE, cell_id=cell_id, k=5)
    fake_store.add_embeddings(
        FAKE, fake_embeddings(len(fake_store.cells()), seed=99), {"name": FAKE}
    )
    with pytest.warns(RetrievalWarning, match="rebuilding stale index.*embeddings changed"):
        after = neighbors(fake_store, FAKE, cell_id=cell_id, k=5)
    assert after["cell_id"].iloc[0] == cell_id  # the new vectors are the ones searched
    assert after["cell_id"].tolist() != before["cell_id"].tolist()
    info = json.loads((index_dir(fake_store, FAKE) / "index.json").read_text())
    assert info["embeddings_digest"] == fake_store.embeddings_digest(FAKE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fresh now: no second rebuild
        neighbors(fake_store, FAKE, cell_id=cell_id, k=5)


def test_stale_index_is_refused_when_asked(fake_store):
    build_index(fake_store, FAKE, kind="ivf", nlist=2)
    fake_store.add_embeddings(
        FAKE, fake_embeddings(len(fake_store.cells()), seed=5), {"name": FAKE}
    )
    with pytest.raises(
        StaleIndexError, match=f"stale index.*re-featurized.*cellbag index .* --encoder {FAKE}"
    ):
        neighbors(fake_store, FAKE, cell_id=fake_store.cells()["cell_id"].iloc[0], on_stale="error")
    # a rebuild keeps the kind and the parameters it was built with
    with pytest.warns(RetrievalWarning):
        r = Retriever(fake_store, FAKE)
    assert r.index.kind == "ivf" and r.index.params.nlist == 2


def test_unreadable_cells_are_not_indexed_and_staleness_sees_them(fake_store):
    build_index(fake_store, FAKE)
    cells = fake_store.cells()
    victim = cells["cell_id"].iloc[2]
    status = np.zeros(len(cells), np.uint8)
    status[2] = 1
    data = fake_embeddings(len(cells))  # same numbers; only the status changes
    fake_store.write_block(
        FAKE, 0, data[: fake_store.block_range(0)[1]], status=status[: fake_store.block_range(0)[1]]
    )
    with pytest.warns(RetrievalWarning, match="readable cells changed"):
        df = neighbors(fake_store, FAKE, cell_id=cells["cell_id"].iloc[0], k=len(cells) - 1)
    assert victim not in set(df["cell_id"]) and len(df) == len(cells) - 1
    with pytest.raises(RetrievalError, match=f"cell {victim} .* is unreadable"):
        neighbors(fake_store, FAKE, cell_id=victim)


def test_remote_store_keeps_its_index_in_the_user_cache(cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLBAG_CACHE", str(tmp_path / "cache"))
    store = Store.create("memory://retrieval-test-store", cohort)
    store.add_embeddings(FAKE, fake_embeddings(cohort.n_cells), {"name": FAKE})
    remote = Store.open("memory://retrieval-test-store")
    df = neighbors(remote, FAKE, cell_id=cohort.cells["cell_id"].iloc[0], k=3)
    assert df["cell_id"].iloc[0] == cohort.cells["cell_id"].iloc[0]
    where = index_dir(remote, FAKE)
    assert where.is_relative_to(tmp_path / "cache") and (where / "index.json").is_file()


def test_encoder_defaults_to_the_only_one_and_unknown_is_an_error(fake_store):
    df = neighbors(fake_store, cell_id=fake_store.cells()["cell_id"].iloc[0], k=1)
    assert df.attrs["encoder_id"] == FAKE
    with pytest.raises(RetrievalError, match=f"no embeddings for encoder 'nope'.*holds: {FAKE}"):
        neighbors(fake_store, "nope", cell_id="x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cell_id": "P999/none.jpg"}, "has no cell 'P999/none.jpg'"),
        ({}, "exactly one query"),
        ({"cell_id": "a", "image": "b.png"}, "exactly one query"),
        ({"cell_id": "FIRST", "split": "val"}, "unknown split 'val'"),
        ({"cell_id": "FIRST", "k": 0}, "k must be >= 1"),
        ({"image": "/does/not/exist.png"}, "image /does/not/exist.png does not exist"),
    ],
)
def test_bad_queries_are_one_line_errors(fake_store, kwargs, message):
    if kwargs.get("cell_id") == "FIRST":
        kwargs["cell_id"] = fake_store.cells()["cell_id"].iloc[0]
    with pytest.raises(CellbagError, match=message) as e:
        neighbors(fake_store, FAKE, **kwargs)
    assert "\n" not in str(e.value)


def test_unfinished_encoder_names_the_command_to_run(fake_store):
    fake_store.init_encoder("half-done", DIM, {"name": "half-done"})
    with pytest.raises(CellbagError, match="half-done is unfinished.*cellbag featurize"):
        neighbors(fake_store, "half-done", cell_id=fake_store.cells()["cell_id"].iloc[0])


def test_ivf_training_sample_reads_whole_chunks_of_ok_rows(cohort, tmp_path):
    from cellbag.retrieval.store_index import _row_sampler

    store = Store.create(tmp_path / "small-chunks.zarr", cohort, chunk_rows=8, block_rows=16)
    store.add_embeddings(FAKE, fake_embeddings(cohort.n_cells), {"name": FAKE})
    rows = np.arange(cohort.n_cells)
    sample = _row_sampler(store, FAKE, rows)
    a, b = sample(10, 0), sample(10, 0)
    np.testing.assert_array_equal(a, b)  # seeded
    assert a.shape == (10, DIM) and np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    x = fake_embeddings(cohort.n_cells)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    first = [int(np.argmin(np.abs(x - v).sum(axis=1))) for v in a]
    assert len({r // 8 for r in first}) == 2  # two whole chunks of 8 rows, cut at 10
    index = build_index(store, FAKE, "ivf", nlist=2, train_size=10)
    assert index.params.train_size == 10 and index.n == cohort.n_cells
    cell_id = store.cells()["cell_id"].iloc[4]
    df = neighbors(store, FAKE, cell_id=cell_id, k=3)
    assert df["cell_id"].iloc[0] == cell_id and df.attrs["index_kind"] == "ivf"
