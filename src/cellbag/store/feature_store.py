"""The feature store: one Zarr v3 group per cohort, embeddings of several encoders inside.

Layout::

    store.zarr/                      attrs: format, format_version, created_with, created,
                                            cohort {root, layout, fingerprint, clinical_digest,
                                            sources [{path, sha256}], ...},
                                            chunk_rows, block_rows
      cells/       cell_id, patient_id, path (str, n_cells)
                   status (uint8: 0 ok, 1 unreadable), reason, sha256, size, mtime_ns: what
                   the file held when last read (size -2: never read, -1: missing)
      patients/    patient_id, split, label (int8, -1 unknown), gender, dob (ISO str),
                   lymph_count (float64), n_cells (int64), offsets (int64, n_patients + 1)
      embeddings/<encoder_id>/       attrs: encoder metadata, generation, completed
          data     (n_cells, dim) float16, chunks of ``chunk_rows`` rows, zstd + crc32c
          status   (n_cells,) uint8: what this encoder did with each cell (0 embedded,
                   1 unreadable, 255 not yet)
          done     (n_blocks,) uint8, one chunk per block: 1 once the block is written
          job.lock while a featurize job runs

Cells are sorted by patient, so a bag is the slice ``offsets[i]:offsets[i + 1]``. A block
(``block_rows`` rows, a multiple of ``chunk_rows``) is the unit of writing: its data and
its cells' status are written first, its done mark last, so a killed job never leaves a
half-written block marked done. Every data chunk carries a crc32c checksum and is written
even when empty; reading checks it and refuses non-finite rows of embedded cells (a missing
chunk reads as NaN), naming the store, the encoder and the patients.

Format 3: every array (tables, status, done marks too) carries zstd + crc32c, and its fill
value is one no write uses (:data:`MISSING_UINT8`, :data:`MISSING_TEXT`, ...), with every
chunk written from the start, so a deleted chunk reads as that value and is an error, never
data. Opening a store validates the patient table (offsets from 0 to ``n_cells``, never
decreasing, counts matching, labels in {-1, 0, 1}), reads every table chunk once, and
checks the digest of the patient table and of the cells' identity recorded in the root
attribute ``tables_digest`` (stores of format 2 have none: they open without that check).
This module imports no torch.
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
from cellbag.data.cohort import check_patient_id
from cellbag.store.blocks import block_range, n_blocks
from cellbag.store.errors import CorruptStore, EncoderNotReady, StoreError, StoreExists
from cellbag.store.fastread import LocalRowReader
from cellbag.store.lock import LOCK_NAME, JobLock, LockError
from cellbag.store.schema import write_schema

if TYPE_CHECKING:
    import zarr

    from cellbag.data import Cohort

FORMAT = "cellbag-store"
FORMAT_VERSION = 3  # 2: per-encoder status, crc32c chunks, file stats and cohort digests
# 3: crc32c on every array, fill values that mark a missing chunk, a digest of the tables
DEFAULT_CHUNK_ROWS = 64
DEFAULT_BLOCK_ROWS = 1024
STATUS_OK, STATUS_UNREADABLE, STATUS_PENDING = 0, 1, 255
#: fill values of format 3 arrays: never written, so reading one means a chunk is missing
MISSING_UINT8, MISSING_INT8, MISSING_INT64 = 254, -128, int(np.iinfo(np.int64).min)
MISSING_TEXT = "<missing chunk>"
_MISSING = {"uint8": MISSING_UINT8, "int8": MISSING_INT8, "int64": MISSING_INT64}
STATUS_NAMES = {STATUS_OK: "ok", STATUS_UNREADABLE: "unreadable"}
SIZE_UNRECORDED, SIZE_MISSING = -2, -1
CREATE_LOCK = "create.lock"
STORE_ENTRIES = ("zarr.json", "cells", "patients", "embeddings")
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


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_target(path: str, cohort: Cohort) -> None:
    """Refuse a store path that would overwrite, or live inside, what the user owns."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise StoreError(f"{path}: a file is in the way; choose a new folder for the store")
    if target.is_dir():
        if Store.exists(path):
            raise StoreExists(f"{path}: a store already exists here")
        entries = sorted(e for e in os.listdir(path) if e != CREATE_LOCK)
        half_made = (target / CREATE_LOCK).exists() and set(entries) <= set(STORE_ENTRIES)
        if entries and not half_made:
            raise StoreError(
                f"{path}: folder is not empty and is not a cellbag store ({len(entries)} "
                f"entries, e.g. {entries[0]!r}); refusing to write into it, choose a new or "
                "empty folder"
            )
    _check_placement(path, cohort)


def _check_placement(path: str, cohort: Cohort) -> None:
    """Refuse a store path inside the cohort's folders, or around them."""
    target = Path(path)
    folders = {Path(p).parent for p in cohort.cells["path"] if p}  # '': imported, no image
    if cohort.sources:
        folders.add(Path(cohort.root))
        folders.update(Path(f).parent for f in cohort.sources)
    for folder in sorted(folders):
        if not folder.exists():
            continue
        folder = folder.resolve()
        if _within(target, folder):
            raise StoreError(
                f"{path}: the store would be inside the cohort's folder {folder}; "
                "put it outside the cohort"
            )
        if _within(folder, target):
            raise StoreError(
                f"{path}: the cohort's folder {folder} is inside this path; "
                "put the store outside the cohort"
            )


def _file_sha(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def cohort_attrs(cohort: Cohort) -> dict[str, Any]:
    """What the store records of the cohort it holds (membership, clinical table, CSVs)."""
    return {
        "root": str(cohort.root),
        "layout": cohort.layout,
        "fingerprint": cohort.fingerprint(),
        "clinical_digest": cohort.clinical_digest(),
        "sources": [{"path": str(f), "sha256": _file_sha(f)} for f in cohort.sources],
        "n_patients": cohort.n_patients,
        "n_cells": cohort.n_cells,
    }


def _patient_columns(cohort: Cohort) -> dict[str, np.ndarray]:
    p = cohort.patients
    offsets = cohort.offsets()
    dob = pd.to_datetime(p["dob"])
    return {
        "patient_id": np.asarray(p["patient_id"].astype(str), dtype=object),
        "split": np.asarray(p["split"].astype(str), dtype=object),
        "gender": np.asarray([g if isinstance(g, str) else "" for g in p["gender"]], object),
        "dob": np.asarray(
            ["" if pd.isna(d) else d.strftime("%Y-%m-%d") for d in dob], dtype=object
        ),
        "label": p["label"].astype("Int64").fillna(-1).to_numpy(dtype=np.int8),
        "lymph_count": p["lymph_count"].to_numpy(dtype=np.float64),
        "n_cells": np.diff(offsets).astype(np.int64),
        "offsets": offsets.astype(np.int64),
    }


def _remove_entries(path: str, names: Sequence[str]) -> None:
    import shutil

    for name in names:
        entry = Path(path) / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


def foreign_entries(path: str | os.PathLike) -> list[str]:
    """The entries of a local store folder that are not the store's own layout (sorted)."""
    own = {*STORE_ENTRIES, CREATE_LOCK}
    return sorted(e for e in os.listdir(path) if e not in own)


def check_replaceable(path: str | os.PathLike, cohort: Cohort | None = None) -> None:
    """Raise unless ``--force`` may replace the store at ``path``: a cellbag store whose
    folder holds nothing else (the first foreign entry is named), and, given the ``cohort``
    that replaces it, a place where its new store may be created. Called before anything
    is deleted."""
    path = _norm_path(path)
    if _is_url(path) or not Store.exists(path):
        raise StoreError(f"{path}: not a cellbag store; refusing to delete anything here")
    foreign = foreign_entries(path)
    if foreign:
        raise StoreError(
            f"{path}: holds {foreign[0]!r}, which cellbag did not write ({len(foreign)} such "
            "entries); refusing to replace or rebuild this store: move them out of it first"
        )
    if cohort is not None:
        _check_placement(path, cohort)


def remove_store(path: str | os.PathLike, replacing_with: Cohort | None = None) -> None:
    """Delete a local cellbag store's own entries; a folder holding anything else is
    refused, naming the first foreign entry, before anything is deleted (see
    :func:`check_replaceable`, which ``replacing_with`` is passed to)."""
    path = _norm_path(path)
    check_replaceable(path, replacing_with)
    _remove_entries(path, (*STORE_ENTRIES, CREATE_LOCK))
    try:
        os.rmdir(path)
    except OSError:
        pass  # the user's own files stay


def chunk_error(error: BaseException) -> str:
    """A failed chunk read, in words."""
    text = str(error)
    if "checksum" in text:
        return "a chunk fails its crc32c checksum (corrupt file)"
    first = text.splitlines()[0] if text else type(error).__name__
    return f"an unreadable chunk ({type(error).__name__}: {first[:120]})"


def _refuse_cohort(path: str) -> None:
    """A cohort (challenge folder or manifest) given where a store is expected: say so."""
    if _is_url(path):
        return
    p = Path(path)
    try:
        manifest = p.is_file() and "image_path" in p.open(errors="replace").readline().lower()
    except OSError:
        manifest = False
    if manifest or (p.is_dir() and ((p / "trainset").is_dir() or (p / "manifest.csv").is_file())):
        raise StoreError(f"{path} is a cohort, not a store: cellbag featurize {path} STORE first")


def _open_error(path: str, e: BaseException) -> StoreError:
    if not _is_url(path) and not Path(path).exists():
        return StoreError(
            f"{path}: no feature store here (create it with `cellbag featurize DATA {path}`)"
        )
    return StoreError(f"{path}: not a readable Zarr store ({type(e).__name__}: {e})")


def _strings(arr: zarr.Array | np.ndarray) -> np.ndarray:
    return np.asarray(arr[:], dtype=object)


def new_array(
    group: zarr.Group,
    name: str,
    values: np.ndarray | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    dtype: Any = None,
    chunks: tuple[int, ...] | None = None,
    initial: Any = None,
) -> zarr.Array:
    """Create a store array: zstd + crc32c on every chunk, and a fill value that no write
    uses (a missing chunk reads as it and is an error); then write ``values`` (or
    ``initial`` everywhere), so every chunk exists from the start."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    if values is not None:
        shape = values.shape
        dtype = str if values.dtype == object else values.dtype
    key = "str" if dtype is str else str(np.dtype(dtype))
    fill = MISSING_TEXT if key == "str" else _MISSING.get(key, np.nan)
    a = group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks or shape,
        fill_value=fill,
        compressors=[ZstdCodec(level=3), Crc32cCodec()],
    )
    if values is None and initial is not None:
        values = np.full(shape, initial, dtype=object if key == "str" else key)
    if values is not None and a.size:
        a[...] = values
    return a


def _marks_missing(arr: zarr.Array) -> Any:
    """The fill value of ``arr`` if it marks a missing chunk (format 3), else None."""
    fill = arr.fill_value
    if isinstance(fill, str) or isinstance(fill, np.str_):
        return MISSING_TEXT if str(fill) == MISSING_TEXT else None
    try:
        value = int(fill)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if value == _MISSING.get(str(arr.dtype)) else None


def tables_digest(root: zarr.Group) -> dict[str, str]:
    """Digests of the patient table (every column) and of the cells' identity (cell_id,
    patient_id): recorded when they are written, checked when the store is opened."""
    out = {}
    for group, names in (("patients", None), ("cells", ("cell_id", "patient_id"))):
        g = root[group]
        h = hashlib.sha256()
        for name in names or sorted(g.array_keys()):
            if group == "patients" and name == "clinical_extra":
                h.update(repr(list(g[name].attrs.get("columns", []))).encode())
            values = np.asarray(g[name][...])
            h.update(f"|{name}:{values.shape}:".encode())
            if values.dtype.kind in "OUT":
                h.update("\x1f".join(map(str, values.ravel().tolist())).encode("utf-8"))
            else:
                h.update(np.ascontiguousarray(values).tobytes())
        out[group] = h.hexdigest()[:32]
    return out


def record_tables_digest(root: zarr.Group) -> None:
    """Record :func:`tables_digest` (after any write to cells/ ids or patients/)."""
    root.attrs.update(tables_digest=tables_digest(root))


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
        self._enc_status: dict[str, np.ndarray] = {}
        self._patient_ids: np.ndarray | None = None

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
        """Write a new store holding ``cohort``'s cells and patients (no embeddings yet).

        Only a new or empty folder is used (never one holding anything else, nor one inside
        the cohort); two jobs creating one store at once: the second gets a :class:`LockError`.
        """
        path = _norm_path(path)
        if cohort.n_cells == 0:
            raise StoreError(f"{path}: cohort {cohort.root} has no cells; nothing to store")
        if chunk_rows <= 0 or block_rows <= 0 or block_rows % chunk_rows:
            raise StoreError(
                f"{path}: block_rows ({block_rows}) must be a positive multiple of "
                f"chunk_rows ({chunk_rows})"
            )
        for pid in cohort.patients["patient_id"]:
            check_patient_id(pid, path, StoreError)
        offsets = cohort.offsets()
        if offsets[-1] != cohort.n_cells:
            raise StoreError(f"{path}: cohort {cohort.root} has cells of unknown patients")
        if _is_url(path):
            if cls.exists(path):
                raise StoreExists(f"{path}: a store already exists here")
            return cls._write_new(path, cohort, chunk_rows, block_rows)
        _check_target(path, cohort)
        lock = JobLock(f"{path}/{CREATE_LOCK}")
        try:
            lock.acquire()
        except LockError as e:
            if "locked by another job" in str(e):
                raise LockError(
                    f"{path}: another job is creating this store right now; wait for it and "
                    "run again"
                ) from None
            raise
        try:
            if cls.exists(path):
                raise StoreExists(f"{path}: a store already exists here")
            _remove_entries(path, STORE_ENTRIES)  # what a killed creation left, if anything
            return cls._write_new(path, cohort, chunk_rows, block_rows)
        except OSError as e:
            raise StoreError(f"{path}: cannot create store ({e.strerror or e})") from None
        finally:
            lock.release()

    @classmethod
    def _write_new(cls, path: str, cohort: Cohort, chunk_rows: int, block_rows: int) -> Store:
        try:
            root = _open_group(path, mode="a")
        except (OSError, ValueError) as e:
            raise StoreError(f"{path}: cannot create store ({e})") from None
        n = cohort.n_cells
        cells = root.create_group("cells")
        for name in ("cell_id", "patient_id", "path"):
            values = np.asarray(cohort.cells[name].astype(str).to_numpy(), dtype=object)
            new_array(cells, name, values, chunks=(min(n, _TABLE_CHUNK),))
        row = {"shape": (n,), "chunks": (block_rows,)}
        new_array(cells, "status", dtype="uint8", initial=STATUS_OK, **row)
        for name in ("reason", "sha256"):
            new_array(cells, name, dtype=str, initial="", **row)
        for name in ("size", "mtime_ns"):
            new_array(cells, name, dtype="int64", initial=SIZE_UNRECORDED, **row)
        pts = root.create_group("patients")
        for name, values in _patient_columns(cohort).items():
            new_array(pts, name, values)
        root.create_group("embeddings")
        record_tables_digest(root)
        root.attrs.update(  # last: the folder is a cellbag store from here on
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created_with": f"cellbag {__version__}",
                "created": _now(),
                "cohort": cohort_attrs(cohort),
                "chunk_rows": chunk_rows,
                "block_rows": block_rows,
            }
        )
        write_schema(root)
        return cls(path, root, "r+")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> Store:
        """Open a store from a local path or an fsspec URL (``file://``, ``memory://``, ``s3://``)."""
        if mode not in ("r", "r+"):
            raise StoreError(f"{path}: mode must be 'r' or 'r+', not {mode!r}")
        path = _norm_path(path)
        try:
            root = _open_group(path, mode=mode)
        except Exception as e:
            _refuse_cohort(path)
            if isinstance(e, FileNotFoundError | KeyError | ValueError | OSError | TypeError):
                raise _open_error(path, e) from None
            # zarr raises its own (GroupNotFoundError, NodeTypeValidationError)
            raise StoreError(f"{path}: no feature store here ({type(e).__name__})") from None
        fmt = root.attrs.get("format")
        if fmt != FORMAT:
            raise StoreError(f"{path}: a Zarr group, but not a cellbag feature store")
        try:
            version = int(root.attrs.get("format_version", 0))
        except (TypeError, ValueError):
            raise StoreError(
                f"{path}: unreadable format_version in the store's attributes"
            ) from None
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format version {version} is newer than this cellbag's "
                f"({FORMAT_VERSION}); upgrade cellbag"
            )
        store = cls(path, root, mode)
        store._validate_tables()
        return store

    # ------------------------------------------------------------------ checked reads
    def _table_damage(self, what: str) -> CorruptStore:
        again = (
            "import the features again (`cellbag store import`)"
            if self.imported
            else f"make a new store (`cellbag featurize {self._cohort_root()} NEW_STORE`)"
        )
        return CorruptStore(
            f"{self.path}: the store's tables are damaged ({what}); they cannot be repaired: "
            f"{again}"
        )

    def _load(self, key: str, sel: Any = Ellipsis, rows_from: int | None = None) -> np.ndarray:
        """``key``'s values at ``sel``, checked: a missing array, an unreadable or missing
        chunk is a one-line :class:`CorruptStore` (never fill values served as data).
        ``rows_from``: the values are cell rows starting there (to name their patients)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = self._root[key]
                values = np.asarray(arr[sel])
        except Exception as e:  # noqa: BLE001 - KeyError, JSON, codec, zstd, crc errors
            what = "missing" if isinstance(e, KeyError) else chunk_error(e)
            raise self._damaged(key, f"{key}: {what}") from None
        fill = _marks_missing(arr)
        if fill is not None:
            hole = np.asarray(values == fill)
            if hole.any():
                where = ""
                if rows_from is not None and self._offsets is not None:
                    first = rows_from + int(np.flatnonzero(hole.reshape(len(hole), -1).any(1))[0])
                    where = f" (patient {self.patients_of_rows([first])[0]})"
                raise self._damaged(key, f"{key}: a chunk is missing{where}")
        return values

    def _damaged(self, key: str, what: str) -> CorruptStore:
        if key.startswith("embeddings/"):
            eid = key.split("/")[1]
            return CorruptStore(
                f"{self.path}: encoder {eid}: {what}; run `cellbag store verify {self.path} "
                "--repair`, then `cellbag featurize` recomputes the damaged blocks"
            )
        return self._table_damage(what)

    def _validate_tables(self) -> None:
        """The patient table must make sense (offsets from 0 to n_cells, never decreasing,
        counts matching, labels in {-1, 0, 1}) and match its recorded digest."""
        try:
            n_cells = int(self._root.attrs["cohort"]["n_cells"])
            recorded = self._root.attrs.get("tables_digest")
        except (KeyError, TypeError, ValueError):
            raise self._table_damage("the cohort attributes are unreadable") from None
        off = self._load("patients/offsets").astype(np.int64)
        counts = self._load("patients/n_cells").astype(np.int64)
        labels = self._load("patients/label").astype(np.int64)
        n = len(off) - 1
        if n < 1 or off[0] != 0 or off[-1] != n_cells or (np.diff(off) < 0).any():
            raise self._table_damage(
                f"patients/offsets must rise from 0 to the {n_cells} cells, never decreasing"
            )
        if len(counts) != n or not np.array_equal(counts, np.diff(off)):
            raise self._table_damage("patients/n_cells disagrees with patients/offsets")
        if len(labels) != n or not np.isin(labels, (-1, 0, 1)).all():
            raise self._table_damage("patients/label holds a value other than -1, 0 or 1")
        for name in ("patient_id", "split"):
            if len(self._load(f"patients/{name}")) != n:
                raise self._table_damage(f"patients/{name} has not one row per patient")
        if recorded is not None:
            try:
                now = tables_digest(self._root)
            except Exception as e:  # noqa: BLE001 - any unreadable table
                raise self._table_damage(chunk_error(e)) from None
            for table in ("patients", "cells"):
                if recorded.get(table) != now[table]:
                    raise self._table_damage(
                        f"the {table} table does not match the digest recorded when it was written"
                    )
        self._offsets = off
        self.cells()  # every chunk of every table is read (and checked) once, here
        self.file_records()
        if "coords" in self._root["cells"]:
            self._load("cells/coords", rows_from=0)

    # ------------------------------------------------------------------ tables
    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes (format, cohort, chunking)."""
        return dict(self._root.attrs)

    @property
    def imported(self) -> bool:
        """True for a store of features made by another tool (`cellbag store import`,
        ``cellbag.store.from_arrays``): its cells have no images."""
        layout = str(self.attrs.get("cohort", {}).get("layout", ""))
        return layout.startswith("import:")

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
            self._offsets = self._load("patients/offsets").astype(np.int64)
        return self._offsets

    def patients(self) -> pd.DataFrame:
        """One row per patient: patient_id, split, label (Int64), gender, dob, lymph_count, n_cells."""
        if self._patients is None:
            g = self._root["patients"]
            col = lambda name: self._load(f"patients/{name}")  # noqa: E731
            label = pd.array(col("label").astype(np.int64), dtype="Int64")
            label[label == -1] = pd.NA
            gender = _strings(col("gender"))
            self._patients = pd.DataFrame(
                {
                    "patient_id": _strings(col("patient_id")).astype(str),
                    "split": _strings(col("split")).astype(str),
                    "label": label,
                    "gender": pd.Series([x if x else None for x in gender], dtype=object),
                    "dob": pd.to_datetime(pd.Series(_strings(col("dob"))).replace("", None)),
                    "lymph_count": col("lymph_count").astype(np.float64),
                    "n_cells": col("n_cells").astype(np.int64),
                }
            )
            if "clinical_extra" in g:  # further clinical columns of an imported store
                extra = col("clinical_extra")
                for j, name in enumerate(g["clinical_extra"].attrs["columns"]):
                    self._patients[name] = np.asarray(extra[:, j], dtype=np.float64)
        return self._patients.copy()

    def _patient_index(self, patient_id: str) -> int:
        if self._pid_index is None:
            pids = _strings(self._load("patients/patient_id"))
            self._pid_index = {str(p): i for i, p in enumerate(pids)}
        try:
            return self._pid_index[str(patient_id)]
        except KeyError:
            raise StoreError(f"{self.path}: no patient {patient_id!r} in this store") from None

    @property
    def status(self) -> np.ndarray:
        """Per-cell status codes (uint8: 0 ok, 1 unreadable), cached."""
        if self._status is None:
            self._status = self._load("cells/status", rows_from=0).astype(np.uint8)
        return self._status

    def cells(self, encoder_id: str | None = None) -> pd.DataFrame:
        """One row per cell: cell_id, patient_id, path, status ('ok'|'unreadable'), reason, sha256.

        ``status`` is the file's (as last read); with ``encoder_id`` it is that encoder's
        (``pending`` for cells it has not embedded yet).
        """
        if encoder_id is not None:
            cells = self.cells()
            codes = self.encoder_status(encoder_id)
            cells["status"] = np.select(
                [codes == STATUS_OK, codes == STATUS_UNREADABLE], ["ok", "unreadable"], "pending"
            )
            return cells
        if self._cells is None:
            codes = self.status

            def col(name: str) -> np.ndarray:
                return _strings(self._load(f"cells/{name}", rows_from=0)).astype(str)

            self._cells = pd.DataFrame(
                {
                    "cell_id": col("cell_id"),
                    "patient_id": col("patient_id"),
                    "path": col("path"),
                    "status": np.where(codes == STATUS_UNREADABLE, "unreadable", "ok"),
                    "reason": col("reason"),
                    "sha256": col("sha256"),
                }
            )
        return self._cells.copy()

    def bag_cells(
        self, patient_id: str, only_ok: bool = True, encoder_id: str | None = None
    ) -> pd.DataFrame:
        """The cells of one patient, in the row order of :meth:`bag` (of ``encoder_id``)."""
        i = self._patient_index(patient_id)
        a, b = self.offsets[i], self.offsets[i + 1]
        rows = self.cells().iloc[a:b]
        if only_ok:
            status = self.status if encoder_id is None else self.encoder_status(encoder_id)
            rows = rows[status[a:b] == STATUS_OK]
        return rows.reset_index(drop=True)

    def patients_of_rows(self, rows: np.ndarray | Sequence[int]) -> list[str]:
        """The ids of the patients owning cell rows ``rows`` (sorted by row, unique)."""
        if self._patient_ids is None:
            self._patient_ids = _strings(self._load("patients/patient_id")).astype(str)
        rows = np.asarray(rows, dtype=np.int64)
        idx = np.unique(np.searchsorted(self.offsets, rows, side="right") - 1)
        return [str(self._patient_ids[i]) for i in idx]

    def encoder_status(self, encoder_id: str) -> np.ndarray:
        """Per-cell status of one encoder (uint8: 0 embedded, 1 unreadable, 255 not yet)."""
        if encoder_id not in self._enc_status:
            g = self._group(encoder_id)
            if "status" in g.attrs.get("arrays", []):
                st = self._load(f"embeddings/{encoder_id}/status", rows_from=0).astype(np.uint8)
            else:  # format 1: one status shared by every encoder
                st = self.status.copy()
            self._enc_status[encoder_id] = st
        return self._enc_status[encoder_id]

    def problems(self) -> pd.DataFrame:
        """Cells recorded as unreadable, with their reason."""
        cells = self.cells()
        return cells[cells["status"] != "ok"].reset_index(drop=True)

    # ------------------------------------------------------------------ encoders
    def encoders(self) -> list[str]:
        """Ids of the encoders with embeddings in this store (complete or not)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                groups = list(self._root["embeddings"].groups())
        except Exception as e:  # noqa: BLE001 - a group's zarr.json unreadable
            raise self._damaged("embeddings", f"embeddings: {chunk_error(e)}") from None
        return sorted(name for name, sub in groups if "done" in sub.attrs.get("arrays", []))

    def _group(self, encoder_id: str) -> zarr.Group:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g = self._root["embeddings"][encoder_id]
        except KeyError:
            g = None
        except Exception as e:  # noqa: BLE001 - its zarr.json unreadable
            raise self._damaged(f"embeddings/{encoder_id}", chunk_error(e)) from None
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
        self._group(encoder_id)
        done = self._load(f"embeddings/{encoder_id}/done")
        if not np.isin(done, (0, 1)).all():
            raise self._damaged(f"embeddings/{encoder_id}", "a done mark is neither 0 nor 1")
        return done.astype(bool)

    def is_complete(self, encoder_id: str) -> bool:
        """Whether every cell of the store has this encoder's embedding."""
        if encoder_id in self._complete:
            return True
        try:
            g = self._group(encoder_id)
        except EncoderNotReady:
            return False
        ok = g.attrs.get("completed") is not None and bool(self.done_blocks(encoder_id).all())
        if ok:  # the done marks and the cells' status are read (and checked), not only attrs
            self.encoder_status(encoder_id)
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
            try:
                arr = self._group(encoder_id)["data"]
            except Exception as e:  # noqa: BLE001 - deleted, or its zarr.json unreadable
                what = "missing" if isinstance(e, KeyError) else chunk_error(e)
                raise self._damaged(f"embeddings/{encoder_id}", f"data: {what}") from None
            self._arrays[encoder_id] = arr
        return arr

    def embeddings_digest(self, encoder_id: str) -> str:
        """A digest that changes whenever the encoder's embeddings are (re)written."""
        a = self._group(encoder_id).attrs
        text = f"{encoder_id}|{a.get('generation')}|{a.get('completed')}|{a.get('completion_id')}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ reading bags
    def _local_root(self) -> Path | None:
        if self.path.startswith("file://"):
            return Path(self.path[len("file://") :])
        return None if _is_url(self.path) else Path(self.path)

    def read_rows(self, encoder_id: str, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` of an encoder as float32, checked (a damaged chunk, or a
        non-finite row of an embedded cell, is a one-line :class:`CorruptStore`)."""
        return self._read_rows(encoder_id, a, b)

    def _read_rows(self, encoder_id: str, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` as float32, checked: from local chunk files, else through zarr."""
        if encoder_id not in self._readers:
            root = self._local_root()
            folder = None if root is None else root / "embeddings" / encoder_id / "data"
            self._readers[encoder_id] = None if folder is None else LocalRowReader.open(folder)
        reader = self._readers[encoder_id]
        x = None
        if reader is not None:
            try:
                x = reader.read(a, b)
            except (OSError, ValueError, RuntimeError):
                pass  # a bad chunk: zarr reads it again and names the failure
        if x is None:
            try:
                x = np.asarray(self.embeddings(encoder_id)[a:b], dtype=np.float32)
            except Exception as e:  # noqa: BLE001 - codecs raise ValueError, zstd its own
                raise self._corrupt(encoder_id, np.arange(a, b), chunk_error(e)) from None
        self._check_rows(encoder_id, a, x)
        return x

    def _corrupt(self, encoder_id: str, rows: np.ndarray, what: str) -> CorruptStore:
        pids = self.patients_of_rows(rows)
        more = f" and {len(pids) - 5} more" if len(pids) > 5 else ""
        return CorruptStore(
            f"{self.path}: encoder {encoder_id}: {what} for patient(s) "
            f"{', '.join(pids[:5])}{more}; run `cellbag store verify {self.path} --repair`, "
            f"then `{self.featurize_command(encoder_id)}` recomputes the damaged blocks"
        )

    def _check_rows(self, encoder_id: str, a: int, x: np.ndarray) -> None:
        """Refuse non-finite rows of embedded cells (a missing chunk reads as NaN)."""
        ok = self.encoder_status(encoder_id)[a : a + len(x)] == STATUS_OK
        bad = ok & ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise self._corrupt(
                encoder_id, a + np.flatnonzero(bad), "missing or non-finite embeddings"
            )

    def bag(self, patient_id: str, encoder_id: str, only_ok: bool = True) -> np.ndarray:
        """One patient's embeddings as float32 ``(n_cells, dim)`` (one slice of the store)."""
        self.require_complete(encoder_id)
        i = self._patient_index(patient_id)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        x = self._read_rows(encoder_id, a, b)
        if only_ok:
            keep = self.encoder_status(encoder_id)[a:b] == STATUS_OK
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
        status = self.encoder_status(encoder_id)
        if needed * 2 >= hi - lo:
            try:
                block = np.asarray(arr[lo:hi], dtype=np.float32)
            except Exception:  # noqa: BLE001 - a bad chunk: read per patient to name them
                block = None
            if block is not None:
                parts = [block[off[i] - lo : off[i + 1] - lo] for i in idx]
                for i, x in zip(idx, parts, strict=True):
                    self._check_rows(encoder_id, int(off[i]), x)
        if needed * 2 < hi - lo or block is None:
            parts = [self._read_rows(encoder_id, off[i], off[i + 1]) for i in idx]
        out = []
        for i, x in zip(idx, parts, strict=True):
            if only_ok:
                keep = status[off[i] : off[i + 1]] == STATUS_OK
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
        from zarr.codecs import Crc32cCodec, ZstdCodec

        if self.has_encoder(encoder_id):
            have = int(self._group(encoder_id).attrs.get("dim", -1))
            if have != dim:
                raise StoreError(
                    f"{self.path}: encoder {encoder_id} holds dim {have}, asked to write dim {dim}"
                )
            self.encoder_status(encoder_id)  # a resumed run trusts these: damage is one line
            self.done_blocks(encoder_id)
            return False
        emb = self._root["embeddings"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = emb.require_group(encoder_id)
        for name in ("data", "done", "status"):
            if name in g:
                del g[name]
        n = self.n_cells
        g.create_array(
            "data",
            shape=(n, dim),
            dtype="float16",
            chunks=(min(self.chunk_rows, n), dim),
            compressors=[ZstdCodec(level=3), Crc32cCodec()],
            fill_value=np.nan,
        )
        new_array(g, "status", shape=(n,), dtype="uint8", chunks=(self.block_rows,), initial=255)
        new_array(g, "done", shape=(self.n_blocks,), dtype="uint8", chunks=(1,), initial=0)
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
            arrays=["data", "status", "done"],
            zarr_version=zarr.__version__,
        )
        g.attrs.update(attrs)
        self._forget(encoder_id)
        return True

    def _forget(self, encoder_id: str) -> None:
        self._arrays.pop(encoder_id, None)
        self._readers.pop(encoder_id, None)
        self._enc_status.pop(encoder_id, None)
        self._complete.discard(encoder_id)

    def reset_encoder(self, encoder_id: str) -> None:
        """Forget an encoder's embeddings (keeps its folder and any lock file)."""
        self._require_writable()
        if not self.has_encoder(encoder_id):
            return
        g = self._group(encoder_id)
        g.attrs.update(arrays=[], completed=None)
        for name in ("data", "done", "status"):
            if name in g:
                del g[name]
        self._forget(encoder_id)

    def reset_blocks(self, encoder_id: str, blocks: Sequence[int]) -> None:
        """Mark blocks of an encoder as not written (they are recomputed by the next run)."""
        self._require_writable()
        if not len(blocks):
            return
        g = self._group(encoder_id)
        g.attrs.update(completed=None)  # first: the encoder is no longer complete
        done = g["done"]
        for blk in blocks:
            done[int(blk)] = 0
        self._forget(encoder_id)

    def record_files(
        self,
        rows: np.ndarray,
        sha256: Sequence[str] | None = None,
        size: Sequence[int] | None = None,
        mtime_ns: Sequence[int] | None = None,
    ) -> None:
        """Record what the files of cell ``rows`` hold (digest, size, mtime)."""
        self._require_writable()
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        cells = self._root["cells"]
        have = set(cells.array_keys())  # a format 1 store has no size / mtime_ns
        for name, values, dtype in (
            ("sha256", sha256, object),
            ("size", size, np.int64),
            ("mtime_ns", mtime_ns, np.int64),
        ):
            if values is None or name not in have:
                continue
            full = np.asarray(self._load(f"cells/{name}", rows_from=0), dtype=dtype)
            full[rows] = np.asarray(list(values), dtype=dtype)
            cells[name][:] = full
        self._cells = None

    def file_records(self) -> pd.DataFrame:
        """Per cell: sha256, size, mtime_ns as last recorded (size -2: never read)."""
        n = self.n_cells
        have = set(self._root["cells"].array_keys())

        def col(name: str) -> np.ndarray:
            if name not in have:  # a format 1 store has no size / mtime_ns
                return np.full(n, SIZE_UNRECORDED, np.int64)
            return self._load(f"cells/{name}", rows_from=0).astype(np.int64)

        return pd.DataFrame(
            {
                "sha256": _strings(self._load("cells/sha256", rows_from=0)).astype(str),
                "size": col("size"),
                "mtime_ns": col("mtime_ns"),
            }
        )

    def write_patients(self, cohort: Cohort) -> None:
        """Replace the patients' split, label and clinical values (same patients, same order)."""
        self._require_writable()
        cols = _patient_columns(cohort)
        pts = self._root["patients"]
        have = np.asarray(_strings(pts["patient_id"]), dtype=str)
        if not np.array_equal(have, cols["patient_id"].astype(str)):
            raise StoreError(f"{self.path}: write_patients needs the same patients in order")
        for name in ("split", "gender", "dob", "label", "lymph_count"):
            pts[name][:] = cols[name]
        record_tables_digest(self._root)
        self._patients = None

    def set_cohort(self, cohort: Cohort) -> None:
        """Record ``cohort``'s digests (after its tables were written)."""
        self._require_writable()
        self._root.attrs.update(cohort=cohort_attrs(cohort))

    def update_paths(self, paths: Sequence[str]) -> bool:
        """Record new image paths (same cells, in order; e.g. a moved cohort); True if changed."""
        self._require_writable()
        new = np.asarray([str(p) for p in paths], dtype=object)
        if len(new) != self.n_cells:
            raise StoreError(f"{self.path}: {len(new)} paths given for {self.n_cells} cells")
        if np.array_equal(_strings(self._load("cells/path", rows_from=0)), new):
            return False
        self._root["cells/path"][:] = new
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
        size: Sequence[int] | None = None,
        mtime_ns: Sequence[int] | None = None,
    ) -> None:
        """Write one block's embeddings (and its cells' status), then mark it done.

        ``sha256`` (and ``size``/``mtime_ns``) say what the files held when read; a file whose
        recorded digest differs changed since the store last read it, and is refused.
        """
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
        if not finite_src.all():
            bad = a + np.flatnonzero(st == STATUS_OK)[~finite_src.all(axis=1)]
            raise StoreError(
                f"{self.path}: encoder {encoder_id} gave non-finite embeddings for patient(s) "
                f"{', '.join(self.patients_of_rows(bad)[:5])}; nothing was stored for them"
            )
        half[st != STATUS_OK] = np.nan
        cells = self._root["cells"]
        if sha256 is not None:
            new_sha = np.asarray(list(sha256), dtype=object)
            old_sha = _strings(self._load("cells/sha256", slice(a, b), rows_from=a))
            moved = (old_sha != "") & (new_sha != "") & (old_sha != new_sha)
            if moved.any():
                ids = _strings(self._load("cells/cell_id", slice(a, b)))[moved]
                raise StoreError(
                    f"{self.path}: {int(moved.sum())} image(s) changed while being featurized "
                    f"(e.g. {ids[0]}); run `cellbag featurize DATA {self.path} --update`"
                )
        self._writable(self.embeddings(encoder_id))[a:b] = half
        if "status" in g.attrs.get("arrays", []):
            g["status"][a:b] = st
        cells["status"][a:b] = st
        if reason is not None:
            cells["reason"][a:b] = np.asarray(list(reason), dtype=object)
        if sha256 is not None:
            cells["sha256"][a:b] = new_sha
        have = set(cells.array_keys())
        for name, values in (("size", size), ("mtime_ns", mtime_ns)):
            if values is not None and name in have:
                cells[name][a:b] = np.asarray(list(values), dtype=np.int64)
        g["done"][block] = 1  # last: the block is now complete
        if self._status is not None:
            self._status[a:b] = st
        if encoder_id in self._enc_status:
            self._enc_status[encoder_id][a:b] = st
        self._cells = None

    @staticmethod
    def _writable(arr: zarr.Array) -> zarr.Array:
        """The array, writing every chunk (an all-NaN chunk too: a missing one is an error)."""
        try:
            return arr.with_config({"write_empty_chunks": True})
        except (AttributeError, TypeError):  # pragma: no cover - older zarr
            return arr

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
