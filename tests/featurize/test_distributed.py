"""Featurize under torchrun: 2 CPU ranks (gloo) equal 1 process, a killed job resumes with
any world size, a second job is refused; the coordination logic with threads as ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cellbag.data import read_cohort
from cellbag.featurize import FeaturizeError, run_featurize
from cellbag.featurize.distributed import (
    Detached,
    RankAborted,
    distributed,
    launched_world_size,
    rank_device,
)
from cellbag.store import JobLock, LockError, Store

KW = {"batch_size": 2, "chunk_rows": 2, "block_rows": 4, "workers": 1}
CLI_OPTS = [
    "--weights",
    "none",
    "--image-size",
    "64",
    "--batch-size",
    "2",
    "--device",
    "cpu",
    "--chunk-rows",
    "2",
    "--block-rows",
    "4",
    "-q",
]
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _raw(store: Store, eid: str) -> np.ndarray:
    return np.asarray(store.embeddings(eid)[:])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    # the same single thread as the in-process reference: CPU kernels' sums depend on it
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cellbag.data.demo import make_demo_cohort

    return make_demo_cohort(
        tmp_path_factory.mktemp("dist") / "demo", patients=6, cells_per_patient=5, seed=0
    )


@pytest.fixture(scope="module")
def encoder():
    from cellbag.featurize import create_encoder
    from cellbag.featurize.smear import SMEAR_CROP, SMEAR_STAIN

    # what --crop auto / --stain auto resolve to on these smear crops: the CLI runs below
    # (torchrun, every rank looking at the images itself) must build this very encoder
    return create_encoder(
        "tf_efficientnet_lite0", weights="none", image_size=64, device="cpu",
        crop=SMEAR_CROP, stain=SMEAR_STAIN,
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cohort_root, encoder):
    """One single-process run (1 thread, like each rank) that every other run must equal."""
    path = tmp_path_factory.mktemp("dist-ref") / "ref.zarr"
    r = run_featurize(cohort_root, path, encoder, **KW)
    assert r.complete and r.store.n_blocks >= 6
    return r


def _assert_same(store: Store, reference, eid: str) -> None:
    assert store.is_complete(eid)
    np.testing.assert_array_equal(_raw(store, eid), _raw(reference.store, eid))
    got, want = store.cells(), reference.store.cells()
    for col in ("cell_id", "status", "sha256"):
        assert list(got[col]) == list(want[col])


# ---------------------------------------------------------------------------- torchrun


def test_torchrun_two_ranks_equal_one_process(tmp_path, cohort_root, reference, encoder) -> None:
    path = tmp_path / "two.zarr"
    cmd = [*_torchrun(), "-m", "cellbag", "featurize", str(cohort_root), str(path), *CLI_OPTS]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    n = reference.store.n_cells
    assert f"embedded {n} cells by 2 ranks" in out.stdout
    assert out.stdout.count("encoder id:") == 1  # only rank 0 reports
    assert "preprocessing (auto): smear crops" in " ".join(out.stdout.split())
    s = Store.open(path)
    eid = encoder.id
    _assert_same(s, reference, eid)
    run = s.encoder_info(eid)["last_run"]
    assert run["world"] == 2 and [r["rank"] for r in run["ranks"]] == [0, 1]
    assert sum(r["cells"] for r in run["ranks"]) == n
    blocks = [r["blocks"] for r in run["ranks"]]
    assert sum(blocks) == s.n_blocks and max(blocks) - min(blocks) <= 1  # balanced
    assert all(r["write_s"] > 0 and r["compute_s"] > 0 for r in run["ranks"])
    assert not (path / "embeddings" / eid / "job.lock").exists()


STALL = """
import os, sys, time
from cellbag.store import feature_store

if os.environ.get("RANK") == "1":  # rank 1 stalls after its first block, to be killed
    write = feature_store.Store.write_block

    def write_then_stall(self, *args, **kwargs):
        write(self, *args, **kwargs)
        tmp = {marker!r} + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, {marker!r})
        time.sleep(600)

    feature_store.Store.write_block = write_then_stall

from cellbag.cli import main

sys.argv[0] = "cellbag"
main()
"""


def test_killed_rank_resumes_with_one_process_and_a_second_job_is_refused(
    tmp_path, cohort_root, reference, encoder
) -> None:
    path = tmp_path / "killed.zarr"
    marker = tmp_path / "rank1.pid"
    script = tmp_path / "stall.py"
    script.write_text(textwrap.dedent(STALL.format(marker=str(marker))))
    cmd = [*_torchrun(), str(script), "featurize", str(cohort_root), str(path), *CLI_OPTS]
    job = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    eid = encoder.id
    lock_path = path / "embeddings" / eid / "job.lock"
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if job.poll() is not None:
                pytest.fail(f"torchrun ended early: {job.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("rank 1 wrote no block within 240 s")
            time.sleep(0.2)
        rank1 = int(marker.read_text())
        holder = json.loads(lock_path.read_text())
        assert holder["pid"] != rank1  # rank 0 holds the lock for the whole job
        # an independent job is refused while the torchrun job runs
        with pytest.raises(LockError, match=r"locked by another job \(pid \d+"):
            run_featurize(cohort_root, path, encoder, **KW)
        os.kill(rank1, signal.SIGKILL)
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    s = Store.open(path)
    done = s.done_blocks(eid)
    assert 1 <= done.sum() < s.n_blocks and not s.is_complete(eid)
    # the rerun has a world of 1: it finishes the rest (taking a dead job's lock over if left)
    r = run_featurize(cohort_root, path, encoder, **KW)
    assert r.complete and r.blocks_skipped == done.sum()
    assert r.cells_computed < s.n_cells
    # rank 0 releases the lock when its barrier sees the dead peer, unless torchrun kills it first
    assert r.took_over_lock is None or r.took_over_lock["job_id"] == holder["job_id"]
    assert not lock_path.exists()
    _assert_same(r.store, reference, eid)


# ---------------------------------------------------------------------------- threads as ranks


class _Shared:
    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=120)
        self.box: dict = {}
        self.cells = 0
        self.lock = threading.Lock()


class ThreadRank(Detached):
    """A coordinator whose ranks are threads of this process (same protocol as torchrun's)."""

    coordinated = True

    def __init__(self, shared: _Shared, rank: int, world: int) -> None:
        super().__init__(rank, world, job_id="threads")
        self.s = shared

    def barrier(self) -> None:
        self.s.barrier.wait()

    def broadcast(self, obj):
        if self.rank == 0:
            self.s.box["b"] = obj
        self.s.barrier.wait()
        out = self.s.box["b"]
        self.s.barrier.wait()
        return out

    def gather(self, obj):
        self.s.box[self.rank] = obj
        self.s.barrier.wait()
        out = [self.s.box[r] for r in range(self.world)]
        self.s.barrier.wait()
        return out

    def add_cells(self, n: int) -> None:
        with self.s.lock:
            self.s.cells += n

    def cells_done(self) -> int:
        return self.s.cells


def _job(world: int, fn) -> list:
    shared = _Shared(world)
    with ThreadPoolExecutor(world) as pool:
        futs = [pool.submit(fn, ThreadRank(shared, r, world)) for r in range(world)]
        out = []
        for f in futs:
            try:
                out.append(f.result(timeout=300))
            except Exception as e:  # noqa: BLE001  the test looks at each rank's error
                out.append(e)
    return out


def test_a_resumed_job_deals_the_blocks_left_evenly(
    tmp_path, cohort_root, reference, encoder
) -> None:
    path = tmp_path / "resume.zarr"
    first = run_featurize(cohort_root, path, encoder, rank=0, world=3, job_id="a", **KW)
    left = first.store.n_blocks - first.blocks_computed
    assert left >= 4 and not first.complete

    def rank(coord):
        return run_featurize(cohort_root, path, encoder, coordinator=coord, **KW)

    reports = _job(2, rank)
    assert all(not isinstance(r, Exception) for r in reports), reports
    r0, r1 = reports
    assert r0.complete and r1.complete and r0.blocks_skipped == first.blocks_computed
    mine = [r["blocks"] for r in r0.ranks]
    assert mine == [(left + 1) // 2, left // 2]  # not all on the rank whose share was undone
    assert r0.cells_computed == r1.cells_computed == reference.store.n_cells - first.cells_computed
    _assert_same(Store.open(path), reference, encoder.id)


def test_a_job_refused_by_the_lock_stops_every_rank(tmp_path, cohort_root, encoder) -> None:
    path = tmp_path / "busy.zarr"
    Store.create(path, read_cohort(cohort_root))
    other = JobLock(str(path / "embeddings" / encoder.id / "job.lock"), job_id="other-job")

    def rank(coord):
        return run_featurize(cohort_root, path, encoder, coordinator=coord, **KW)

    with other:
        e0, e1 = _job(2, rank)
    assert isinstance(e0, LockError) and "locked by another job" in str(e0)
    assert isinstance(e1, RankAborted) and "rank 0 failed" in str(e1) and str(path) in str(e1)
    assert not Store.open(path).has_encoder(encoder.id)


# ---------------------------------------------------------------------------- errors


def test_rank_device_and_launch_errors(monkeypatch) -> None:
    import torch

    assert rank_device("cpu") == ("cpu", "gloo")
    if not torch.cuda.is_available():
        from cellbag.featurize import EncoderError

        with pytest.raises(EncoderError, match="no CUDA GPU"):
            rank_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(FeaturizeError, match="WORLD_SIZE='two'"):
        launched_world_size()
    for k in _LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    assert launched_world_size() == 1
    with pytest.raises(FeaturizeError, match="launch with torchrun"), distributed("cpu"):
        pass


def test_block_rows_must_divide(tmp_path, cohort_root) -> None:
    from cellbag.cli import app
    from cellbag.store import StoreError

    store = tmp_path / "bad.zarr"
    args = ["featurize", str(cohort_root), str(store), *CLI_OPTS[:-3], "--block-rows", "3", "-q"]
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, StoreError)
    assert "block_rows (3) must be a positive multiple of chunk_rows (2)" in str(res.exception)


def test_a_rank_that_cannot_see_the_cohort_stops(tmp_path, cohort_root, encoder) -> None:
    root = tmp_path / "here"
    shutil.copytree(cohort_root, root)
    path = tmp_path / "gone.zarr"
    run_featurize(root, path, encoder, rank=0, world=2, job_id="j", **KW)
    done = Store.open(path).done_blocks(encoder.id).sum()
    root.rename(tmp_path / "elsewhere")  # as on a machine without the cohort mounted
    with pytest.raises(FeaturizeError, match=r"rank 1 on .* cannot see the cohort \(.*here/"):
        run_featurize(None, path, encoder, rank=1, world=2, job_id="j", **KW)
    assert Store.open(path).done_blocks(encoder.id).sum() == done
