"""The job lock: one job per encoder, ranks of one job share it, dead owners are replaced."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cellbag.store import JobLock, LockError, pid_alive


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_job_is_refused_and_same_job_shares(tmp_path: Path) -> None:
    path = str(tmp_path / "enc" / "job.lock")
    with JobLock(path, job_id="a") as first:
        assert first.held and first.read()["job_id"] == "a"
        info = first.read()
        assert info["pid"] > 0 and info["host"] == socket.gethostname() and info["started"]
        with pytest.raises(LockError, match=r"locked by another job \(pid \d+"):
            JobLock(path, job_id="b").acquire()
        rank1 = JobLock(path, job_id="a").acquire()  # another rank of job "a"
        assert not rank1.held
        rank1.release()
        assert Path(path).exists()  # a joining rank never removes the owner's lock
    assert not Path(path).exists()


def test_dead_owner_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "job.lock"
    dead = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "x", "job_id": "old"}
    assert not pid_alive(dead["pid"])
    path.write_text(json.dumps(dead))
    with JobLock(str(path), job_id="new") as lock:
        assert lock.held and lock.took_over["job_id"] == "old"
        assert lock.read()["job_id"] == "new"
    assert not list(tmp_path.iterdir())


def test_other_host_is_never_guessed_dead(tmp_path: Path) -> None:
    path = tmp_path / "job.lock"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x", "job_id": "o"}))
    with pytest.raises(LockError, match="elsewhere"):
        JobLock(str(path), job_id="new").acquire()


def test_reused_pid_is_not_the_owner(tmp_path: Path) -> None:
    import os

    path = tmp_path / "job.lock"
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": "x",
        "pid_start_time": "1",
        "job_id": "old",
    }  # our pid, but another start time
    path.write_text(json.dumps(info))
    with JobLock(str(path), job_id="new") as lock:
        assert lock.took_over is not None
