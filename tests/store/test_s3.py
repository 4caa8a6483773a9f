"""Object storage for real: a local S3 server (moto's server mode on 127.0.0.1) and s3fs.

featurize -> store info -> store verify -> cv -> index against ``s3://bucket/cohort.zarr``
give the numbers of a local store; a featurize killed with SIGKILL resumes from S3; two
jobs racing for the encoder's lock: exactly one wins (a conditional create,
``If-None-Match: *``). Skipped, with the reason, when moto or s3fs is missing or the server
does not start.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cellbag.data import read_cohort
from cellbag.data.demo import make_demo_cohort
from cellbag.store import Store
from cellbag.store.errors import LockError
from cellbag.store.lock import JobLock

FEAT = {"batch_size": 8, "block_rows": 8, "chunk_rows": 8, "workers": 1}  # few objects
ENC = {"name": "tf_efficientnet_lite0", "weights": "none", "image_size": 32}
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free local port, and the environment that points boto at it.

    Yields the environment variables (for subprocesses too); stops the server afterwards.
    """
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[dev]')")
    server_mod = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')"
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "CELLBAG_CACHE": str(tmp_path_factory.mktemp("cache")),  # indexes of s3:// stores
    }
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    try:
        port = _free_port()
        server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"moto's S3 server did not start on 127.0.0.1: {e}")
    env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        try:
            fs.mkdir("bucket")
        except Exception as e:  # pragma: no cover - depends on the machine
            server.stop()
            pytest.skip(f"moto's S3 server at {env['AWS_ENDPOINT_URL']} does not answer: {e}")
        yield env
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = make_demo_cohort(
        tmp_path_factory.mktemp("s3-cohort") / "demo",
        patients=8,
        cells_per_patient=3,
        seed=4,
        test_fraction=0.0,
    )
    return read_cohort(root)


@pytest.fixture(scope="module")
def encoder():
    from cellbag.featurize import create_encoder

    return create_encoder(ENC["name"], weights=ENC["weights"], image_size=ENC["image_size"])


@pytest.fixture(scope="module")
def local(tmp_path_factory, cohort, encoder):
    """The same cohort featurized into a local store: what S3 must equal."""
    import torch

    from cellbag.featurize import run_featurize

    torch.set_num_threads(1)  # bit-for-bit equal sums need the same thread count
    path = tmp_path_factory.mktemp("s3-local") / "local.zarr"
    return run_featurize(cohort, path, encoder, **FEAT).store


def _raw(store: Store, eid: str) -> np.ndarray:
    return np.asarray(store.embeddings(eid)[:])


def _url() -> str:
    return f"s3://bucket/{uuid.uuid4().hex[:8]}/cohort.zarr"


def _cli(*args: str) -> str:
    from cellbag.cli import app

    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, f"cellbag {' '.join(args)}: {res.output}{res.exception!r}"
    return res.output


def test_featurize_info_verify_cv_index_on_s3(s3, cohort, encoder, local, tmp_path):
    from cellbag import retrieval
    from cellbag.featurize import run_featurize

    url = _url()
    rep = run_featurize(cohort, url, encoder, **FEAT)
    assert rep.complete and rep.created_store
    eid = encoder.id
    s = Store.open(url)
    np.testing.assert_array_equal(_raw(s, eid), _raw(local, eid))  # float16, bit for bit
    assert list(s.cells()["sha256"]) == list(local.cells()["sha256"])

    info = _cli("store", "info", url)
    assert eid in info and "complete" in info
    _cli("store", "verify", url)

    metrics = {}
    for name, store in (("s3", url), ("local", str(local.path))):
        out = tmp_path / f"cv-{name}"
        cv = [
            "--head",
            "meanpool",
            "--folds",
            "2",
            "--repeats",
            "1",
            "--inner-folds",
            "0",
            "-j",
            "1",
        ]
        _cli("cv", store, *cv, "-q", "-o", str(out))
        metrics[name] = json.loads((out / "meanpool" / "metrics.json").read_text())
    for m in metrics.values():
        for k in [k for k in m if "second" in k or k.endswith("_s")]:
            m.pop(k)
    assert metrics["s3"] == metrics["local"]

    _cli("index", url, "-q")
    assert any(Path(s3["CELLBAG_CACHE"]).rglob("index.json"))  # an s3 store's index: the cache
    cell = str(local.cells()["cell_id"].iloc[5])
    a = retrieval.neighbors(Store.open(url), eid, cell_id=cell, k=5, on_stale="error")
    b = retrieval.neighbors(local, eid, cell_id=cell, k=5)
    assert list(a["cell_id"]) == list(b["cell_id"])
    np.testing.assert_array_equal(a["similarity"].to_numpy(), b["similarity"].to_numpy())


def test_kill_9_during_s3_featurize_resumes(s3, cohort, encoder, local, tmp_path, kill_9_featurize):
    import torch

    from cellbag.featurize import run_featurize

    url = _url()
    pid = kill_9_featurize(cohort.root, url, ENC, FEAT, tmp_path / "block-written", env=s3)
    eid = encoder.id
    s = Store.open(url)
    lock = JobLock(f"{url}/embeddings/{eid}/job.lock")
    assert lock.read()["pid"] == pid  # the dead job's lock object is left behind...
    done = s.done_blocks(eid)
    assert 1 <= done.sum() < done.size
    torch.set_num_threads(1)  # as the reference (cv and index may have set another count)
    r = run_featurize(cohort, url, encoder, **FEAT)
    assert r.took_over_lock is not None and r.took_over_lock["pid"] == pid  # ...taken over
    assert r.complete and r.blocks_skipped == done.sum() and lock.read() is None
    np.testing.assert_array_equal(_raw(Store.open(url), eid), _raw(local, eid))


def test_two_jobs_racing_for_the_s3_lock_one_wins(s3):
    url = f"{_url()}/embeddings/enc/job.lock"
    assert JobLock(url).conditional_create  # s3fs: If-None-Match: *
    jobs = [JobLock(url, job_id=f"job-{i}") for i in range(6)]
    start = threading.Barrier(len(jobs))
    outcome: dict[str, str] = {}

    def take(lock: JobLock) -> None:
        start.wait()
        try:
            lock.acquire()
            outcome[lock.job_id] = "won"
        except LockError as e:
            outcome[lock.job_id] = str(e)

    threads = [threading.Thread(target=take, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [j for j, o in outcome.items() if o == "won"]
    assert len(outcome) == len(jobs) and len(winners) == 1, outcome
    assert all("locked by another job" in o for o in outcome.values() if o != "won")
    assert jobs[0].read()["job_id"] == winners[0]


def test_a_create_after_a_stale_check_is_refused_by_the_server(s3, monkeypatch):
    """The race check-then-write loses: both jobs saw no lock, the second write must fail."""
    url = f"{_url()}/embeddings/enc/job.lock"
    first, second = JobLock(url, job_id="first"), JobLock(url, job_id="second")
    monkeypatch.setattr(type(first.fs), "exists", lambda self, path, **kw: False)
    assert first._create_exclusive(b'{"job_id": "first"}')
    assert not second._create_exclusive(b'{"job_id": "second"}')
    assert first.read()["job_id"] == "first"
