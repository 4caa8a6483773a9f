"""Data safety: nothing the user owns is deleted; corrupt or missing chunks are errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cellbag.store import LockError, Store, StoreError
from cellbag.store.errors import CorruptStore
from cellbag.store.feature_store import CREATE_LOCK, remove_store
from cellbag.store.lock import JobLock
from cellbag.store.verify import check_encoder, quick_check, verify

EID = "fake-0001"


@pytest.fixture()
def store(tmp_path: Path, store_cohort, fake_embeddings) -> Store:
    s = Store.create(tmp_path / "s.zarr", store_cohort, chunk_rows=4, block_rows=8)
    s.add_embeddings(EID, fake_embeddings, {"name": "fake"})
    return s


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ nothing is deleted


def test_non_empty_folder_is_refused_and_kept(tmp_path: Path, store_cohort) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    (mine / "figs").mkdir()
    (mine / "figs" / "a.png").write_bytes(b"\x89PNG")
    before = _files(mine)
    with pytest.raises(StoreError, match=r"not empty and is not a cellbag store") as e:
        Store.create(mine, store_cohort)
    assert "\n" not in str(e.value) and str(mine) in str(e.value)
    assert _files(mine) == before


def test_a_file_in_the_way_is_refused(tmp_path: Path, store_cohort) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    with pytest.raises(StoreError, match="a file is in the way"):
        Store.create(f, store_cohort)
    assert f.read_text() == "keep me"


def test_store_inside_or_around_the_cohort_is_refused(tmp_path: Path, store_cohort) -> None:
    root = tmp_path / "cohort"
    shutil.copytree(store_cohort.root, root)
    from cellbag.data import read_cohort

    cohort = read_cohort(root)
    before = _files(root)
    for target, match in (
        (root, "is not a cellbag store"),  # the cohort itself: not empty
        (root / "store.zarr", "inside the cohort's folder"),
        (root / "trainset" / "new.zarr", "inside the cohort's folder"),
        (tmp_path, "not empty"),  # the cohort inside the store
    ):
        with pytest.raises(StoreError, match=match):
            Store.create(target, cohort)
    assert _files(root) == before
    assert not (root / "store.zarr").exists()


def test_empty_folder_is_used(tmp_path: Path, store_cohort) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    s = Store.create(target, store_cohort)
    assert Store.exists(target) and s.n_cells == store_cohort.n_cells
    assert not (target / CREATE_LOCK).exists()


def test_concurrent_creation_gives_the_loser_one_line(tmp_path: Path, store_cohort) -> None:
    target = tmp_path / "race.zarr"
    target.mkdir()
    holder = JobLock(str(target / CREATE_LOCK), job_id="the-winner")
    with holder, pytest.raises(LockError, match="another job is creating this store") as e:
        Store.create(target, store_cohort)
    assert "\n" not in str(e.value)
    Store.create(target, store_cohort)  # once the winner is gone, it works


def test_two_processes_create_one_store(tmp_path: Path, store_cohort) -> None:
    target = tmp_path / "both.zarr"
    script = (
        "import sys, time\n"
        "from cellbag.data import read_cohort\n"
        "from cellbag.store import Store, StoreError\n"
        f"c = read_cohort({str(store_cohort.root)!r})\n"
        "t = float(sys.argv[1])\n"
        "time.sleep(max(0.0, t - time.time()))\n"
        "try:\n"
        f"    Store.create({str(target)!r}, c)\n"
        "    print('created')\n"
        "except StoreError as e:\n"
        "    print('refused:', e)\n"
    )
    start = str(time.time() + 4)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for _out, err in outs:
        assert b"Traceback" not in err, err.decode()
    lines = sorted(o[0].decode().strip() for o in outs)
    assert lines[0] == "created" and lines[1].startswith("refused:"), lines
    assert "another job is creating" in lines[1] or "already exists" in lines[1]
    assert Store.exists(target)


def test_killed_creation_is_cleaned_up(tmp_path: Path, store_cohort) -> None:
    target = tmp_path / "half.zarr"
    target.mkdir()
    (target / "cells").mkdir()
    (target / "zarr.json").write_text("{}")
    dead = {"pid": 2**22 + 7, "host": os.uname().nodename, "started": "x", "job_id": "dead"}
    (target / CREATE_LOCK).write_text(json.dumps(dead))
    s = Store.create(target, store_cohort)
    assert Store.exists(target) and s.n_cells == store_cohort.n_cells


def test_remove_store_refuses_anything_else(tmp_path: Path, store: Store) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.txt").write_text("x")
    with pytest.raises(StoreError, match="not a cellbag store; refusing"):
        remove_store(mine)
    assert (mine / "x.txt").exists()
    (Path(store.path) / "README.txt").write_text("my notes")  # a user file inside the store
    with pytest.raises(StoreError, match="holds 'README.txt', which cellbag did not write"):
        remove_store(store.path)
    assert Store.exists(store.path)
    assert (Path(store.path) / "README.txt").read_text() == "my notes"
    (Path(store.path) / "README.txt").unlink()
    remove_store(store.path)
    assert not Path(store.path).exists()


# ------------------------------------------------------------------ locks


def test_lock_with_non_numeric_pid_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "job.lock"
    path.write_text(json.dumps({"pid": "twelve", "host": os.uname().nodename, "job_id": "j"}))
    with pytest.raises(LockError, match="non-numeric pid 'twelve'") as e:
        JobLock(str(path)).acquire()
    assert "\n" not in str(e.value)


def test_unwritable_lock_is_one_line(tmp_path: Path, monkeypatch) -> None:
    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(LockError, match="Permission denied.*read-only") as e:
        JobLock(str(tmp_path / "job.lock")).acquire()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ fault injection


def _chunk(store: Store, i: int) -> Path:
    return Path(store.path) / "embeddings" / EID / "data" / "c" / str(i) / "0"


def _patient_of_chunk(store: Store, i: int) -> str:
    return store.patients_of_rows([i * store.chunk_rows])[0]


@pytest.mark.parametrize("fault", ["delete", "truncate", "flip"])
def test_damaged_chunks_are_detected(store: Store, fault: str) -> None:
    i = 3
    f = _chunk(store, i)
    raw = f.read_bytes()
    if fault == "delete":
        f.unlink()
    elif fault == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    else:
        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(flipped))
    pid = _patient_of_chunk(store, i)
    s = Store.open(store.path)
    with pytest.raises(CorruptStore) as e:
        s.bag(pid, EID)
    msg = str(e.value)
    assert s.path in msg and EID in msg and pid in msg and "\n" not in msg
    with pytest.raises(CorruptStore, match=pid):
        s.bags(EID)  # the one-pass read of every bag too
    check = check_encoder(s, EID)
    assert not check.ok and pid in check.patients
    assert not verify(s).ok
    if fault == "delete":
        assert quick_check(s, EID)  # store info sees it without reading chunks
    others = [p for p in s.patients()["patient_id"] if p not in check.patients]
    assert others and all(np.isfinite(s.bag(p, EID)).all() for p in others)


def test_intact_store_verifies(store: Store) -> None:
    report = verify(store)
    assert report.ok and [e.encoder_id for e in report.encoders] == [EID]
    assert quick_check(store, EID) == []


def test_unreadable_only_chunk_is_still_written(tmp_path: Path, store_cohort) -> None:
    s = Store.create(tmp_path / "nan.zarr", store_cohort, chunk_rows=4, block_rows=8)
    s.init_encoder(EID, 3, {"name": "fake"})
    for b in range(s.n_blocks):
        a, z = s.block_range(b)
        st = np.ones(z - a, np.uint8) if b == 0 else np.zeros(z - a, np.uint8)
        s.write_block(EID, b, np.ones((z - a, 3)), status=st)
    s.mark_complete(EID)
    assert _chunk(s, 0).exists()  # all-NaN chunk: written, so a missing one is an error
    assert verify(s).ok


def test_non_finite_embeddings_are_refused_at_write(tmp_path: Path, store_cohort) -> None:
    s = Store.create(tmp_path / "w.zarr", store_cohort, chunk_rows=4, block_rows=8)
    s.init_encoder(EID, 3, {"name": "fake"})
    a, z = s.block_range(0)
    data = np.ones((z - a, 3))
    data[2, 1] = np.nan
    with pytest.raises(StoreError, match="non-finite embeddings for patient"):
        s.write_block(EID, 0, data)
    assert not s.done_blocks(EID)[0]


def test_an_update_killed_between_its_renames_is_finished(tmp_path: Path, store_cohort) -> None:
    from cellbag.store.sync import OLD_SUFFIX, UPDATE_SUFFIX, recover_swap

    path = tmp_path / "s.zarr"
    Store.create(str(path) + OLD_SUFFIX, store_cohort, chunk_rows=4, block_rows=8)
    new = Store.create(str(path) + UPDATE_SUFFIX, store_cohort, chunk_rows=8, block_rows=8)
    assert recover_swap(path)
    assert Store.open(path).chunk_rows == new.chunk_rows == 8
    assert not Path(str(path) + OLD_SUFFIX).exists() and not recover_swap(path)


def test_labels_check_is_cheap_and_tolerates_a_missing_cohort(tmp_path: Path, store_cohort) -> None:
    from cellbag.data import read_cohort
    from cellbag.store.sync import labels_out_of_sync, require_labels_in_sync

    root = tmp_path / "cohort"
    shutil.copytree(store_cohort.root, root)
    s = Store.create(tmp_path / "s.zarr", read_cohort(root))
    assert labels_out_of_sync(s) is None
    csv = root / "trainset" / "trainset_true.csv"
    csv.write_text(csv.read_text().replace(",", " ,"))  # same values, other bytes
    assert labels_out_of_sync(s) is None
    lines = csv.read_text().splitlines()
    pid = lines[1].split(",")[0].strip()
    lines[1] = (
        lines[1].replace(" ,1 ,", " ,0 ,", 1)
        if " ,1 ," in lines[1]
        else lines[1].replace(" ,0 ,", " ,1 ,", 1)
    )
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match=rf"{pid}.*--update") as e:
        require_labels_in_sync(s)
    assert "\n" not in str(e.value)
    shutil.rmtree(root)  # a store copied to another machine: the store is the source
    assert labels_out_of_sync(s) is None
