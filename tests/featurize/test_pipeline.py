"""The featurize pipeline: complete, exact resume, no-op rerun, locks, bad images, CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cellbag.errors import CellbagError
from cellbag.featurize import FeaturizeError, run_featurize
from cellbag.store import JobLock, LockError, Store


def _raw(store: Store, eid: str) -> np.ndarray:
    return np.asarray(store.embeddings(eid)[:])


def test_reference_run_is_complete_and_matches_embed(reference_run, tiny_encoder) -> None:
    r = reference_run
    s, eid = r.store, r.encoder_id
    assert r.complete and s.is_complete(eid) and r.created_store
    assert r.cells_computed == s.n_cells and r.blocks_computed == s.n_blocks > 3
    info = s.encoder_info(eid)
    assert info["name"] == "tf_efficientnet_lite0" and info["weights"] == "none"
    assert info["image_size"] == 48 and info["dim"] == 1280 and info["precision"] == "fp32"
    assert info["weights_sha256"] == tiny_encoder.metadata["weights_sha256"]
    # the bag holds what encoder.embed gives for the same files (up to float16)
    pid = s.patients()["patient_id"][2]
    paths = s.bag_cells(pid)["path"]
    want = tiny_encoder.embed([Image.open(p) for p in paths])
    np.testing.assert_allclose(s.bag(pid, eid), want, rtol=2e-3, atol=2e-3)


def test_awkward_images(reference_run) -> None:
    s, eid = reference_run.store, reference_run.encoder_id
    cells = s.cells().set_index("cell_id")
    broken = [c for c in cells.index if c.endswith("zz_broken.jpg")]
    assert len(broken) == 1
    assert cells.loc[broken[0], "status"] == "unreadable"
    assert "unreadable image" in cells.loc[broken[0], "reason"]
    assert list(reference_run.unreadable["cell_id"]) == broken
    for name in ("zz_gray.png", "zz_rgba.png", "zz_odd.jpg", "zz_16bit.png"):
        cid = next(c for c in cells.index if c.endswith(name))
        assert cells.loc[cid, "status"] == "ok" and len(cells.loc[cid, "sha256"]) == 16
    pid = broken[0].split("/")[0]
    full = s.bag(pid, eid, only_ok=False)
    row = list(s.bag_cells(pid, only_ok=False)["cell_id"]).index(broken[0])
    assert np.isnan(full[row]).all()
    ok = s.bag(pid, eid)
    assert len(ok) == len(full) - 1 and np.isfinite(ok).all()


def test_rerun_is_a_no_op(reference_run, feat_cohort, tiny_encoder, feat_kw) -> None:
    s = reference_run.store
    before = s.embeddings_digest(reference_run.encoder_id)
    r = run_featurize(feat_cohort, s.path, tiny_encoder, **feat_kw)
    assert r.cells_computed == 0 and r.blocks_skipped == s.n_blocks and r.complete
    assert s.embeddings_digest(reference_run.encoder_id) == before


def test_resume_after_crash_between_blocks(
    tmp_path, feat_cohort, tiny_encoder, reference_run, feat_kw
) -> None:
    def crash(block: int) -> None:
        raise KeyboardInterrupt("simulated crash after a block")

    path = tmp_path / "crash.zarr"
    with pytest.raises(KeyboardInterrupt):
        run_featurize(feat_cohort, path, tiny_encoder, on_block=crash, **feat_kw)
    s = Store.open(path)
    eid = tiny_encoder.id
    done = s.done_blocks(eid)
    assert 1 <= done.sum() < done.size and not s.is_complete(eid)
    assert not (path / "embeddings" / eid / "job.lock").exists()  # released on the way out
    r = run_featurize(feat_cohort, path, tiny_encoder, **feat_kw)
    assert r.complete and r.blocks_skipped == done.sum()
    assert r.cells_computed < s.n_cells
    np.testing.assert_array_equal(_raw(r.store, eid), _raw(reference_run.store, eid))
    assert list(r.store.cells()["status"]) == list(reference_run.store.cells()["status"])


def test_resume_after_kill_9(
    tmp_path, feat_cohort, tiny_encoder, reference_run, feat_kw, tiny_spec, kill_9_featurize
) -> None:
    path = tmp_path / "killed.zarr"
    pid = kill_9_featurize(feat_cohort.root, path, tiny_spec, feat_kw, tmp_path / "block-written")
    eid = tiny_encoder.id
    lock = path / "embeddings" / eid / "job.lock"
    assert lock.exists()  # the dead job's lock is left behind...
    s = Store.open(path)
    assert 1 <= s.done_blocks(eid).sum() < s.n_blocks
    r = run_featurize(feat_cohort, path, tiny_encoder, **feat_kw)
    assert r.took_over_lock is not None and r.took_over_lock["pid"] == pid  # ...and taken over
    assert r.complete and not lock.exists()
    np.testing.assert_array_equal(_raw(r.store, eid), _raw(reference_run.store, eid))


def test_second_job_is_refused(tmp_path, feat_cohort, tiny_encoder, feat_kw) -> None:
    path = tmp_path / "busy.zarr"
    Store.create(path, feat_cohort, chunk_rows=4, block_rows=8)
    lock = JobLock(str(path / "embeddings" / tiny_encoder.id / "job.lock"), job_id="other-job")
    with lock, pytest.raises(LockError, match=r"locked by another job \(pid \d+"):
        run_featurize(feat_cohort, path, tiny_encoder, **feat_kw)
    assert not Store.open(path).has_encoder(tiny_encoder.id)


def test_store_of_another_cohort_is_refused(tmp_path, reference_run, tiny_encoder, feat_kw) -> None:
    from cellbag.data.demo import make_demo_cohort

    other = make_demo_cohort(tmp_path / "other", patients=2, cells_per_patient=2, seed=9)
    with pytest.raises(FeaturizeError, match="made from another cohort"):
        run_featurize(other, reference_run.store.path, tiny_encoder, **feat_kw)


def test_force_recomputes(tmp_path, feat_cohort, tiny_encoder, reference_run, feat_kw) -> None:
    path = tmp_path / "force.zarr"
    r1 = run_featurize(feat_cohort, path, tiny_encoder, **feat_kw)
    d1 = r1.store.embeddings_digest(tiny_encoder.id)
    r2 = run_featurize(feat_cohort, path, tiny_encoder, force=True, **feat_kw)
    assert r2.cells_computed == r2.store.n_cells and r2.complete
    assert r2.store.embeddings_digest(tiny_encoder.id) != d1
    np.testing.assert_array_equal(
        _raw(r2.store, tiny_encoder.id), _raw(reference_run.store, tiny_encoder.id)
    )


def test_featurize_cli(tmp_path, feat_cohort) -> None:
    from cellbag.cli import app

    runner = CliRunner()
    store = tmp_path / "cli.zarr"
    args = [
        "featurize",
        str(feat_cohort.root),
        str(store),
        "--weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "-q",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "encoder id: tf_efficientnet_lite0-" in res.output and "(complete)" in res.output
    flat = re.sub(r"\s+", "", res.output)  # unwrapped: a long tmp path moves the breaks
    assert "1unreadableimage" in flat and "zz_broken.jpg" in flat
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "nothing to do" in res.output
    res = runner.invoke(app, ["store", "info", str(store)])
    assert res.exit_code == 0 and "complete" in res.output and "zz_broken.jpg" in res.output
    res = runner.invoke(app, ["encoders"])
    assert res.exit_code == 0 and "dinobloom_s" in res.output
    res = runner.invoke(app, [*args[:3], "--encoder", "no_such_model_x"])
    assert isinstance(res.exception, CellbagError) and "no_such_model_x" in str(res.exception)


def test_cli_errors_are_one_line(tmp_path, feat_cohort) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "cellbag", "store", "info", str(tmp_path / "missing.zarr")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no feature store here" in out.stderr


def test_changed_images_are_refused_in_one_line(
    tmp_path, feat_cohort, tiny_encoder, feat_kw
) -> None:
    import shutil

    from cellbag.data import read_cohort

    root = tmp_path / "copy"
    shutil.copytree(feat_cohort.root, root)
    cohort = read_cohort(root)
    path = tmp_path / "changed.zarr"
    run_featurize(cohort, path, tiny_encoder, **feat_kw)
    before = _raw(Store.open(path), tiny_encoder.id)
    victim = cohort.cells.iloc[3]
    Image.new("RGB", (30, 30), "blue").save(victim["path"], format="JPEG")
    for force in (False, True):  # --force recomputes one encoder: not a way around staleness
        with pytest.raises(FeaturizeError, match=r"1 changed, 0 added, 0 removed") as e:
            run_featurize(cohort, path, tiny_encoder, force=force, **feat_kw)
        assert victim["cell_id"] in str(e.value) and "--update" in str(e.value)
        assert "\n" not in str(e.value)
    np.testing.assert_array_equal(_raw(Store.open(path), tiny_encoder.id), before)


def test_ranks_write_disjoint_blocks(
    tmp_path, feat_cohort, tiny_encoder, reference_run, feat_kw
) -> None:
    path = tmp_path / "ranks.zarr"
    r0 = run_featurize(feat_cohort, path, tiny_encoder, rank=0, world=2, job_id="j", **feat_kw)
    assert not r0.complete and r0.blocks_computed == (r0.store.n_blocks + 1) // 2
    r1 = run_featurize(feat_cohort, path, tiny_encoder, rank=1, world=2, job_id="j", **feat_kw)
    assert r1.complete and r0.cells_computed + r1.cells_computed == r1.store.n_cells
    eid = tiny_encoder.id
    np.testing.assert_array_equal(_raw(r1.store, eid), _raw(reference_run.store, eid))


def test_moved_cohort_is_read_from_its_new_place(
    tmp_path, feat_cohort, tiny_encoder, feat_kw
) -> None:
    import shutil

    from cellbag.data import read_cohort

    old = tmp_path / "old"
    shutil.copytree(feat_cohort.root, old)
    path = tmp_path / "moved.zarr"
    Store.create(
        path, read_cohort(old), chunk_rows=feat_kw["chunk_rows"], block_rows=feat_kw["block_rows"]
    )
    new = tmp_path / "new"
    old.rename(new)
    r = run_featurize(new, path, tiny_encoder, **feat_kw)
    assert r.complete and len(r.unreadable) == 1  # only the broken JPEG
    assert r.store.cells()["path"].str.startswith(str(new)).all()
