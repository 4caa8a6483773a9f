"""The feature store: one Zarr v3 group per cohort, embeddings of several encoders inside.

Layout::

    store.zarr/                      attrs: format, format_version, created_with, created,
                                            cohort {root, layout, fingerprint, ...},
                                            chunk_rows, block_rows
      cells/       cell_id, patient_id, path (str, n_cells)
                   status (uint8: 0 ok, 1 unreadable), reason, sha256 (per block of rows)
      patients/    patient_id, split, label (int8, -1 unknown), gender, dob (ISO str),
                   lymph_count (float64), n_cells (int64), offsets (int64, n_patients + 1)
      embeddings/<encoder_id>/       attrs: encoder metadata, generation, completed
          data     (n_cells, dim) float16, chunks of ``chunk_rows`` rows, zstd
          done     (n_blocks,) uint8, one chunk per block: 1 once the block is written
          job.lock while a featurize job runs

Cells are sorted by patient, so a bag is the slice ``offsets[i]:offsets[i + 1]``. A block
(``block_rows`` rows, a multiple of ``chunk_rows``) is the unit of writing: its data and
its cells' status are written first, its done mark last, so a killed job never leaves a
half-written block marked done. This module imports no torch.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cellbag import __version__
from cellbag.store.blocks import block_range, n_blocks
from cellbag.store.errors import EncoderNotReady, StoreError
from cellbag.store.fastread import LocalRowReader
from cellbag.store.lock import LOCK_NAME, JobLock

if TYPE_CHECKING:
    import zarr

    from cellbag.data import Cohort

FORMAT = "cellbag-store"
FORMAT_VERSION = 1
DEFAULT_CHUNK_ROWS = 64
DEFAULT_BLOCK_ROWS = 1024
STATUS_OK, STATUS_UNREADABLE = 0, 1
STATUS_NAMES = {STATUS_OK: "ok", STATUS_UNREADABLE: "unreadable"}
_TABLE_CHUNK = 65536


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_url(path: str) -> bool:
    return "://" in path


def _norm_path(path: str | os.PathLike) -> str:
    text = os.fspath(path)
    if _is_url(text):
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def _strings(arr: zarr.Array) -> np.ndarray:
    return np.asarray(arr[:], dtype=object)


def _zarr():
    import zarr

    return zarr


def _open_group(path: str, mode: str) -> zarr.Group:
    zarr = _zarr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stray non-zarr files (a lock) are not errors
        return zarr.open_group(path, mode=mode)


class Store:
    """A cohort's feature store. Build with :meth:`create`, open with :meth:`open`."""

    def __init__(self, path: str, group: zarr.Group, mode: str) -> None:
        self.path = path
        self.mode = mode
        self._root = group
        self._offsets: np.ndarray | None = None
        self._pid_index: dict[str, int] | None = None
        self._status: np.ndarray | None = None
        self._cells: pd.DataFrame | None = None
        self._patients: pd.DataFrame | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._readers: dict[str, LocalRowReader | None] = {}
        self._complete: set[str] = set()

    def __repr__(self) -> str:
        return f"Store({self.path!r}, cells={self.n_cells}, encoders={self.encoders()})"

    # ------------------------------------------------------------------ build / open
    @classmethod
    def exists(cls, path: str | os.PathLike) -> bool:
        """Whether a cellbag store lives at ``path``."""
        try:
            cls.open(path, mode="r")
        except StoreError:
            return False
        return True

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        cohort: Cohort,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> Store:
        """Write a new store holding ``cohort``'s cells and patients (no embeddings yet)."""
        path = _norm_path(path)
        if cohort.n_cells == 0:
            raise StoreError(f"{path}: cohort {cohort.root} has no cells; nothing to store")
        if chunk_rows <= 0 or block_rows <= 0 or block_rows % chunk_rows:
            raise StoreError(
                f"{path}: block_rows ({block_rows}) must be a positive multiple of "
                f"chunk_rows ({chunk_rows})"
            )
        if cls.exists(path):
            raise StoreError(f"{path}: a store already exists here")
        offsets = cohort.offsets()
        if offsets[-1] != cohort.n_cells:
            raise StoreError(f"{path}: cohort {cohort.root} has cells of unknown patients")
        try:
            root = _open_group(path, mode="w")
        except (OSError, ValueError) as e:
            raise StoreError(f"{path}: cannot create store ({e})") from None
        n = cohort.n_cells
        cells = root.create_group("cells")
        for name in ("cell_id", "patient_id", "path"):
            a = cells.create_array(name, shape=(n,), dtype=str, chunks=(min(n, _TABLE_CHUNK),))
            a[:] = np.asarray(cohort.cells[name].astype(str).to_numpy(), dtype=object)
        cells.create_array(
            "status", shape=(n,), dtype="uint8", chunks=(block_rows,), fill_value=STATUS_OK
        )
        for name in ("reason", "sha256"):
            cells.create_array(name, shape=(n,), dtype=str, chunks=(block_rows,), fill_value="")
        p = cohort.patients
        m = len(p)
        pts = root.create_group("patients")
        label = p["label"].astype("Int64").fillna(-1).to_numpy(dtype=np.int8)
        dob = pd.to_datetime(p["dob"])
        columns: dict[str, np.ndarray] = {
            "patient_id": np.asarray(p["patient_id"].astype(str), dtype=object),
            "split": np.asarray(p["split"].astype(str), dtype=object),
            "gender": np.asarray([g if isinstance(g, str) else "" for g in p["gender"]], object),
            "dob": np.asarray(
                ["" if pd.isna(d) else d.strftime("%Y-%m-%d") for d in dob], dtype=object
            ),
            "label": label,
            "lymph_count": p["lymph_count"].to_numpy(dtype=np.float64),
            "n_cells": np.diff(offsets).astype(np.int64),
            "offsets": offsets.astype(np.int64),
        }
        for name, values in columns.items():
            dtype = str if values.dtype == object else values.dtype
            a = pts.create_array(name, shape=values.shape, dtype=dtype, chunks=values.shape)
            a[:] = values
        root.create_group("embeddings")
        root.attrs.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created_with": f"cellbag {__version__}",
                "created": _now(),
                "cohort": {
                    "root": str(cohort.root),
                    "layout": cohort.layout,
                    "fingerprint": cohort.fingerprint(),
                    "n_patients": m,
                    "n_cells": n,
                },
                "chunk_rows": chunk_rows,
                "block_rows": block_rows,
            }
        )
        return cls(path, root, "r+")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> Store:
        """Open a store from a local path or an fsspec URL (``file://``, ``memory://``, ``s3://``)."""
        if mode not in ("r", "r+"):
            raise StoreError(f"{path}: mode must be 'r' or 'r+', not {mode!r}")
        path = _norm_path(path)
        try:
            root = _open_group(path, mode=mode)
        except (FileNotFoundError, KeyError, ValueError, OSError, TypeError) as e:
            if not _is_url(path) and not Path(path).exists():
                raise StoreError(
                    f"{path}: no feature store here (create it with `cellbag featurize DATA {path}`)"
                ) from None
            raise StoreError(
                f"{path}: not a readable Zarr store ({type(e).__name__}: {e})"
            ) from None
        except Exception as e:  # zarr raises its own (GroupNotFoundError, NodeTypeValidationError)
            raise StoreError(f"{path}: no feature store here ({type(e).__name__})") from None
        fmt = root.attrs.get("format")
        if fmt != FORMAT:
            raise StoreError(f"{path}: a Zarr group, but not a cellbag feature store")
        version = int(root.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format version {version} is newer than this cellbag's "
                f"({FORMAT_VERSION}); upgrade cellbag"
            )
        return cls(path, root, mode)

    # ------------------------------------------------------------------ tables
    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes (format, cohort, chunking)."""
        return dict(self._root.attrs)

    @property
    def zarr_group(self) -> zarr.Group:
        """The underlying Zarr group (read it; write through the Store's methods)."""
        return self._root

    @property
    def fingerprint(self) -> str:
        """The digest of the cohort's membership this store was made from."""
        return str(self._root.attrs["cohort"]["fingerprint"])

    @property
    def n_cells(self) -> int:
        return int(self._root.attrs["cohort"]["n_cells"])

    @property
    def chunk_rows(self) -> int:
        return int(self._root.attrs["chunk_rows"])

    @property
    def block_rows(self) -> int:
        return int(self._root.attrs["block_rows"])

    @property
    def n_blocks(self) -> int:
        return n_blocks(self.n_cells, self.block_rows)

    def block_range(self, block: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of a block."""
        return block_range(block, self.n_cells, self.block_rows)

    @property
    def offsets(self) -> np.ndarray:
        """CSR offsets (n_patients + 1): patient ``i``'s cells are rows ``offsets[i]:offsets[i+1]``."""
        if self._offsets is None:
            self._offsets = np.asarray(self._root["patients/offsets"][:], dtype=np.int64)
        return self._offsets

    def patients(self) -> pd.DataFrame:
        """One row per patient: patient_id, split, label (Int64), gender, dob, lymph_count, n_cells."""
        if self._patients is None:
            g = self._root["patients"]
            label = pd.array(np.asarray(g["label"][:], dtype=np.int64), dtype="Int64")
            label[label == -1] = pd.NA
            gender = _strings(g["gender"])
            self._patients = pd.DataFrame(
                {
                    "patient_id": _strings(g["patient_id"]).astype(str),
                    "split": _strings(g["split"]).astype(str),
                    "label": label,
                    "gender": pd.Series([x if x else None for x in gender], dtype=object),
                    "dob": pd.to_datetime(pd.Series(_strings(g["dob"])).replace("", None)),
                    "lymph_count": np.asarray(g["lymph_count"][:], dtype=np.float64),
                    "n_cells": np.asarray(g["n_cells"][:], dtype=np.int64),
                }
            )
        return self._patients.copy()

    def _patient_index(self, patient_id: str) -> int:
        if self._pid_index is None:
            pids = _strings(self._root["patients/patient_id"])
            self._pid_index = {str(p): i for i, p in enumerate(pids)}
        try:
            return self._pid_index[str(patient_id)]
        except KeyError:
            raise StoreError(f"{self.path}: no patient {patient_id!r} in this store") from None

    @property
    def status(self) -> np.ndarray:
        """Per-cell status codes (uint8: 0 ok, 1 unreadable), cached."""
        if self._status is None:
            self._status = np.asarray(self._root["cells/status"][:], dtype=np.uint8)
        return self._status

    def cells(self) -> pd.DataFrame:
        """One row per cell: cell_id, patient_id, path, status ('ok'|'unreadable'), reason, sha256."""
        if self._cells is None:
            g = self._root["cells"]
            codes = self.status
            self._cells = pd.DataFrame(
                {
                    "cell_id": _strings(g["cell_id"]).astype(str),
                    "patient_id": _strings(g["patient_id"]).astype(str),
                    "path": _strings(g["path"]).astype(str),
                    "status": np.where(codes == STATUS_UNREADABLE, "unreadable", "ok"),
                    "reason": _strings(g["reason"]).astype(str),
                    "sha256": _strings(g["sha256"]).astype(str),
                }
            )
        return self._cells.copy()

    def bag_cells(self, patient_id: str, only_ok: bool = True) -> pd.DataFrame:
        """The cells of one patient, in the row order of :meth:`bag`."""
        i = self._patient_index(patient_id)
        a, b = self.offsets[i], self.offsets[i + 1]
        rows = self.cells().iloc[a:b]
        if only_ok:
            rows = rows[self.status[a:b] == STATUS_OK]
        return rows.reset_index(drop=True)

    def problems(self) -> pd.DataFrame:
        """Cells recorded as unreadable, with their reason."""
        cells = self.cells()
        return cells[cells["status"] != "ok"].reset_index(drop=True)

    # ------------------------------------------------------------------ encoders
    def encoders(self) -> list[str]:
        """Ids of the encoders with embeddings in this store (complete or not)."""
        g = self._root["embeddings"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            groups = list(g.groups())
        return sorted(name for name, sub in groups if "done" in sub.attrs.get("arrays", []))

    def _group(self, encoder_id: str) -> zarr.Group:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g = self._root["embeddings"][encoder_id]
        except KeyError:
            g = None
        if g is None or "done" not in g.attrs.get("arrays", []):
            have = ", ".join(self.encoders()) or "none"
            raise EncoderNotReady(
                f"{self.path}: no embeddings for encoder {encoder_id!r} (have: {have}); "
                f"run `cellbag featurize {self._cohort_root()} {self.path} "
                f"--encoder {encoder_id.rsplit('-', 1)[0] or 'NAME'}`"
            )
        return g

    def _cohort_root(self) -> str:
        return str(self._root.attrs.get("cohort", {}).get("root", "DATA"))

    def has_encoder(self, encoder_id: str) -> bool:
        try:
            self._group(encoder_id)
        except EncoderNotReady:
            return False
        return True

    def encoder_info(self, encoder_id: str) -> dict[str, Any]:
        """The encoder's recorded metadata, plus ``done_blocks``, ``n_blocks``, ``complete``."""
        g = self._group(encoder_id)
        info = dict(g.attrs)
        done = self.done_blocks(encoder_id)
        info.update(
            encoder_id=encoder_id,
            done_blocks=int(done.sum()),
            n_blocks=int(done.size),
            complete=info.get("completed") is not None,
        )
        return info

    def done_blocks(self, encoder_id: str) -> np.ndarray:
        """Boolean (n_blocks,): which blocks of the encoder are written."""
        g = self._group(encoder_id)
        return np.asarray(g["done"][:], dtype=bool)

    def is_complete(self, encoder_id: str) -> bool:
        """Whether every cell of the store has this encoder's embedding."""
        if encoder_id in self._complete:
            return True
        try:
            g = self._group(encoder_id)
        except EncoderNotReady:
            return False
        ok = g.attrs.get("completed") is not None
        if ok:
            self._complete.add(encoder_id)
        return ok

    def featurize_command(self, encoder_id: str) -> str:
        """The command that (re)computes an encoder's embeddings into this store."""
        g = self._group(encoder_id)
        a = g.attrs
        cmd = (
            f"cellbag featurize {self._cohort_root()} {self.path} --encoder {a.get('name', 'NAME')}"
        )
        if a.get("weights") and a.get("weights") != a.get("default_weights"):
            cmd += f" --weights {a['weights']}"
        if a.get("image_size") and a.get("image_size") != a.get("default_image_size"):
            cmd += f" --image-size {a['image_size']}"
        if a.get("adapter_path"):
            cmd += f" --adapter {a['adapter_path']}"
        return cmd

    def require_complete(self, encoder_id: str) -> None:
        """Raise :class:`EncoderNotReady` naming the command to run if not complete."""
        if self.is_complete(encoder_id):
            return
        done = self.done_blocks(encoder_id)
        raise EncoderNotReady(
            f"{self.path}: encoder {encoder_id} is unfinished ({int(done.sum())}/{done.size} "
            f"blocks); finish it with `{self.featurize_command(encoder_id)}`"
        )

    def embeddings(self, encoder_id: str) -> zarr.Array:
        """The lazy (n_cells, dim) float16 Zarr array of an encoder (rows of unreadable
        or unwritten cells are NaN; check :meth:`is_complete` and ``status``)."""
        arr = self._arrays.get(encoder_id)
        if arr is None:
            arr = self._group(encoder_id)["data"]
            self._arrays[encoder_id] = arr
        return arr

    def embeddings_digest(self, encoder_id: str) -> str:
        """A digest that changes whenever the encoder's embeddings are (re)written."""
        a = self._group(encoder_id).attrs
        text = f"{encoder_id}|{a.get('generation')}|{a.get('completed')}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ reading bags
    def _local_root(self) -> Path | None:
        if self.path.startswith("file://"):
            return Path(self.path[len("file://") :])
        return None if _is_url(self.path) else Path(self.path)

    def _read_rows(self, encoder_id: str, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` as float32: straight from local chunk files, else through zarr."""
        if encoder_id not in self._readers:
            root = self._local_root()
            folder = None if root is None else root / "embeddings" / encoder_id / "data"
            self._readers[encoder_id] = None if folder is None else LocalRowReader.open(folder)
        reader = self._readers[encoder_id]
        if reader is not None:
            try:
                return reader.read(a, b)
            except (OSError, ValueError):
                self._readers[encoder_id] = None  # unexpected file: let zarr read it
        return np.asarray(self.embeddings(encoder_id)[a:b], dtype=np.float32)

    def bag(self, patient_id: str, encoder_id: str, only_ok: bool = True) -> np.ndarray:
        """One patient's embeddings as float32 ``(n_cells, dim)`` (one slice of the store)."""
        self.require_complete(encoder_id)
        i = self._patient_index(patient_id)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        x = self._read_rows(encoder_id, a, b)
        if only_ok:
            keep = self.status[a:b] == STATUS_OK
            if not keep.all():
                x = x[keep]
        return x

    def bags(
        self,
        encoder_id: str,
        patient_ids: Sequence[str] | None = None,
        only_ok: bool = True,
    ) -> list[np.ndarray]:
        """Several bags (all patients by default, in the store's order), read in one pass."""
        self.require_complete(encoder_id)
        if patient_ids is None:
            idx = np.arange(len(self.offsets) - 1)
        else:
            idx = np.asarray([self._patient_index(p) for p in patient_ids], dtype=np.int64)
        if len(idx) == 0:
            return []
        off = self.offsets
        lo, hi = int(off[idx].min()), int(off[idx + 1].max())
        arr = self.embeddings(encoder_id)
        needed = int((off[idx + 1] - off[idx]).sum())
        if needed * 2 >= hi - lo:
            block = np.asarray(arr[lo:hi], dtype=np.float32)
            parts = [block[off[i] - lo : off[i + 1] - lo] for i in idx]
        else:
            parts = [self._read_rows(encoder_id, off[i], off[i + 1]) for i in idx]
        out = []
        for i, x in zip(idx, parts, strict=True):
            if only_ok:
                keep = self.status[off[i] : off[i + 1]] == STATUS_OK
                x = x if keep.all() else x[keep]
            out.append(np.ascontiguousarray(x))
        return out

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"{self.path}: opened read-only; open with mode='r+' to write")

    def lock(self, encoder_id: str, job_id: str | None = None) -> JobLock:
        """The job lock of an encoder (a context manager); see :class:`JobLock`."""
        return JobLock(f"{self.path}/embeddings/{encoder_id}/{LOCK_NAME}", job_id=job_id)

    def init_encoder(self, encoder_id: str, dim: int, metadata: dict[str, Any]) -> bool:
        """Create the encoder's arrays if missing; return True if created.

        An existing group must agree on ``dim``; its metadata is kept (a resumed run).
        """
        self._require_writable()
        zarr = _zarr()
        from zarr.codecs import ZstdCodec

        if self.has_encoder(encoder_id):
            have = int(self._group(encoder_id).attrs.get("dim", -1))
            if have != dim:
                raise StoreError(
                    f"{self.path}: encoder {encoder_id} holds dim {have}, asked to write dim {dim}"
                )
            return False
        emb = self._root["embeddings"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = emb.require_group(encoder_id)
        for name in ("data", "done"):
            if name in g:
                del g[name]
        n = self.n_cells
        g.create_array(
            "data",
            shape=(n, dim),
            dtype="float16",
            chunks=(min(self.chunk_rows, n), dim),
            compressors=ZstdCodec(level=3),
            fill_value=np.nan,
        )
        g.create_array("done", shape=(self.n_blocks,), dtype="uint8", chunks=(1,), fill_value=0)
        attrs = {k: v for k, v in metadata.items() if k not in ("completed",)}
        attrs.update(
            encoder_id=encoder_id,
            dim=int(dim),
            dtype="float16",
            n_cells=n,
            chunk_rows=self.chunk_rows,
            block_rows=self.block_rows,
            generation=uuid.uuid4().hex,
            created=_now(),
            completed=None,
            arrays=["data", "done"],
            zarr_version=zarr.__version__,
        )
        g.attrs.update(attrs)
        self._arrays.pop(encoder_id, None)
        self._readers.pop(encoder_id, None)
        self._complete.discard(encoder_id)
        return True

    def reset_encoder(self, encoder_id: str) -> None:
        """Forget an encoder's embeddings (keeps its folder and any lock file)."""
        self._require_writable()
        if not self.has_encoder(encoder_id):
            return
        g = self._group(encoder_id)
        g.attrs.update(arrays=[], completed=None)
        for name in ("data", "done"):
            if name in g:
                del g[name]
        self._arrays.pop(encoder_id, None)
        self._readers.pop(encoder_id, None)
        self._complete.discard(encoder_id)

    def update_paths(self, paths: Sequence[str]) -> bool:
        """Record new image paths (same cells, in order; e.g. a moved cohort); True if changed."""
        self._require_writable()
        new = np.asarray([str(p) for p in paths], dtype=object)
        if len(new) != self.n_cells:
            raise StoreError(f"{self.path}: {len(new)} paths given for {self.n_cells} cells")
        arr = self._root["cells/path"]
        if np.array_equal(_strings(arr), new):
            return False
        arr[:] = new
        self._cells = None
        return True

    def update_encoder_attrs(self, encoder_id: str, **attrs: Any) -> None:
        """Add or change metadata of an encoder (e.g. run statistics)."""
        self._require_writable()
        self._group(encoder_id).attrs.update(attrs)

    def write_block(
        self,
        encoder_id: str,
        block: int,
        data: np.ndarray,
        status: np.ndarray | None = None,
        reason: Sequence[str] | None = None,
        sha256: Sequence[str] | None = None,
    ) -> None:
        """Write one block's embeddings (and its cells' status), then mark it done."""
        self._require_writable()
        a, b = self.block_range(block)
        g = self._group(encoder_id)
        dim = int(g.attrs["dim"])
        data = np.asarray(data)
        if data.shape != (b - a, dim):
            raise StoreError(
                f"{self.path}: block {block} of {encoder_id} needs shape {(b - a, dim)}, "
                f"got {data.shape}"
            )
        with np.errstate(over="ignore"):
            half = data.astype(np.float16)
        st = np.zeros(b - a, np.uint8) if status is None else np.asarray(status, np.uint8)
        finite_src = np.isfinite(data[st == STATUS_OK])
        if finite_src.all() and not np.isfinite(half[st == STATUS_OK]).all():
            raise StoreError(
                f"{self.path}: encoder {encoder_id} block {block}: values overflow float16"
            )
        half[st != STATUS_OK] = np.nan
        self.embeddings(encoder_id)[a:b] = half
        cells = self._root["cells"]
        cells["status"][a:b] = st
        if reason is not None:
            cells["reason"][a:b] = np.asarray(list(reason), dtype=object)
        if sha256 is not None:
            cells["sha256"][a:b] = np.asarray(list(sha256), dtype=object)
        g["done"][block] = 1  # last: the block is now complete
        if self._status is not None:
            self._status[a:b] = st
        self._cells = None

    def mark_complete(self, encoder_id: str, **attrs: Any) -> bool:
        """Record completion if every block is done; return whether it is complete."""
        self._require_writable()
        if not self.done_blocks(encoder_id).all():
            return False
        g = self._group(encoder_id)
        if g.attrs.get("completed") is None or attrs:
            g.attrs.update(dict(attrs, completed=_now(), completion_id=uuid.uuid4().hex))
        self._complete.add(encoder_id)
        return True

    def add_embeddings(
        self, encoder_id: str, data: np.ndarray, metadata: dict[str, Any] | None = None
    ) -> None:
        """Write a whole encoder at once (synthetic data for tests and benchmarks)."""
        self._require_writable()
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[0] != self.n_cells:
            raise StoreError(
                f"{self.path}: embeddings for {encoder_id} need shape ({self.n_cells}, dim), "
                f"got {data.shape}"
            )
        meta = dict(metadata or {})
        meta.setdefault("name", encoder_id)
        self.reset_encoder(encoder_id)
        self.init_encoder(encoder_id, int(data.shape[1]), meta)
        status = self.status
        for blk in range(self.n_blocks):
            a, b = self.block_range(blk)
            self.write_block(encoder_id, blk, data[a:b], status=status[a:b])
        self.mark_complete(encoder_id)

    # ------------------------------------------------------------------ disk
    def size_bytes(self, encoder_id: str | None = None) -> int:
        """Bytes on disk of the store (or of one encoder's group)."""
        import fsspec.core

        fs, root = fsspec.core.url_to_fs(self.path)
        target = root if encoder_id is None else f"{root}/embeddings/{encoder_id}"
        try:
            return int(fs.du(target, total=True))
        except (FileNotFoundError, OSError):
            return 0
