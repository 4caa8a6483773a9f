"""A job lock file (owner pid, host, start time) that keeps two jobs off one encoder.

The lock guards against two *jobs*, not two ranks of one job: every rank of a job passes
the same ``job_id`` and may hold the lock together. A lock whose owner died on this host
(pid gone, or reused by another process) is taken over; a lock from another host is
never guessed dead and must be removed by hand.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cellbag.store.errors import LockError

LOCK_NAME = "job.lock"


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a reused pid from its first owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] in ("Z", "X"):  # zombie / dead: the owner is gone
        return "dead"
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host (and is the same process, if known)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _proc_start_time(pid)
    if now == "dead":
        return False
    return start_time is None or now is None or now == start_time


class JobLock:
    """Exclusive lock file at ``path`` (a local path or an fsspec URL); use as a context manager."""

    def __init__(self, path: str, job_id: str | None = None, command: str | None = None) -> None:
        import fsspec.core

        self.path = path
        self.fs, self.fs_path = fsspec.core.url_to_fs(path)
        self.local = type(self.fs).__name__ == "LocalFileSystem"
        self.job_id = job_id or uuid.uuid4().hex
        self.command = command if command is not None else " ".join(sys.argv[:3])
        self.held = False
        self.took_over: dict[str, Any] | None = None

    # -------------------------------------------------------------- file primitives
    def _content(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "pid": pid,
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pid_start_time": _proc_start_time(pid),
            "job_id": self.job_id,
            "command": self.command,
        }

    def _create_exclusive(self, data: bytes) -> bool:
        if self.local:
            try:
                os.makedirs(os.path.dirname(self.fs_path), exist_ok=True)
                fd = os.open(self.fs_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            except OSError as e:
                raise LockError(
                    f"{self.path}: cannot create the lock file ({e.strerror or e}); "
                    "is the store read-only?"
                ) from None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.conditional_create:  # the server refuses a second create (If-None-Match: *)
            try:
                self.fs.pipe_file(self.fs_path, data, mode="create")
            except FileExistsError:
                return False
            except OSError as e:  # 409: another conditional create of this key in flight
                if "ConditionalRequestConflict" in str(e):
                    return False
                raise
            return True
        if self.fs.exists(self.fs_path):  # other filesystems: check, then write (best effort)
            return False
        self.fs.pipe_file(self.fs_path, data)
        return True

    @property
    def conditional_create(self) -> bool:
        """Whether the filesystem creates the lock object only if absent, atomically on the
        server: s3fs (``If-None-Match: *``, an s3fs whose ``pipe_file`` takes ``mode``).
        Elsewhere (gcsfs, adlfs, older s3fs) the lock is check-then-write: two jobs started
        at the same moment may both take it (docs/object-storage.md)."""
        import inspect

        if type(self.fs).__name__ != "S3FileSystem":
            return False
        pipe = getattr(self.fs, "_pipe_file", None)
        return pipe is not None and "mode" in inspect.signature(pipe).parameters

    def read(self) -> dict[str, Any] | None:
        """The current lock's content, or None when there is no lock."""
        try:
            raw = self.fs.cat_file(self.fs_path)
        except (FileNotFoundError, OSError):
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            return {"pid": -1, "host": "?", "started": "?", "job_id": None, "corrupt": True}
        return info

    def _remove_stale(self, seen: dict[str, Any]) -> None:
        """Move the stale lock aside atomically; put it back if it was not the one we saw."""
        aside = f"{self.fs_path}.stale-{uuid.uuid4().hex[:8]}"
        try:
            if self.local:
                os.rename(self.fs_path, aside)
            else:
                self.fs.mv(self.fs_path, aside)
        except (FileNotFoundError, OSError):
            return
        try:
            moved = json.loads(self.fs.cat_file(aside))
        except (OSError, ValueError):
            moved = None
        if moved is not None and moved.get("job_id") != seen.get("job_id"):
            # a live job created a fresh lock meanwhile: restore it if nobody else did
            if self.local:
                try:
                    os.link(aside, self.fs_path)
                except FileExistsError:
                    pass
            elif not self.fs.exists(self.fs_path):
                self.fs.mv(aside, self.fs_path)
                return
        try:
            self.fs.rm_file(aside)
        except (FileNotFoundError, OSError):
            pass

    def _is_stale(self, info: dict[str, Any]) -> bool:
        if info.get("corrupt"):
            return True
        if info.get("host") != socket.gethostname():
            return False
        pid = info.get("pid", -1)
        if isinstance(pid, bool) or not isinstance(pid, int):
            try:
                pid = int(str(pid).strip())
            except ValueError:
                raise LockError(
                    f"{self.path}: lock file holds a non-numeric pid {info.get('pid')!r}; "
                    "delete the file if no job is running on this store"
                ) from None
        return not pid_alive(pid, info.get("pid_start_time"))

    # -------------------------------------------------------------- public
    def acquire(self) -> JobLock:
        """Take the lock, join it (same ``job_id``) or take over a dead owner's lock."""
        data = json.dumps(self._content(), indent=1).encode()
        for _ in range(5):
            if self._create_exclusive(data):
                self.held = True
                return self
            info = self.read()
            if info is None:
                continue  # removed meanwhile: try again
            if info.get("job_id") == self.job_id:
                self.held = False  # a rank of the same job: share, never remove
                return self
            if not self._is_stale(info):
                raise LockError(
                    f"{self.path}: locked by another job (pid {info.get('pid')} on "
                    f"{info.get('host')}, started {info.get('started')}); wait for it, or "
                    "delete this file if that job is gone"
                )
            self.took_over = info
            self._remove_stale(info)
            time.sleep(0.01)
        raise LockError(f"{self.path}: could not take the lock (contended); try again")

    def release(self) -> None:
        """Remove the lock file if this process created it."""
        if not self.held:
            return
        info = self.read()
        if info is not None and info.get("job_id") == self.job_id:
            try:
                self.fs.rm_file(self.fs_path)
            except (FileNotFoundError, OSError):
                pass
        self.held = False

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
