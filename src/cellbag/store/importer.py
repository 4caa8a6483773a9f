"""Features made elsewhere come in: per-patient HDF5 files or an instance table → a store.

Sources (:func:`import_features`):

- a folder of ``<patient_id>.h5`` files as CLAM / TRIDENT write them (``features`` (n, d),
  optional ``coords``) or as STAMP writes them (``feats``); a CLAM output folder holding
  ``h5_files/`` is read from there; a ``cell_ids`` dataset (cellbag's export) keeps the ids;
- a table (CSV or Parquet), one row per instance: ``patient_id``, feature columns
  ``f0, f1, …`` (or else every other numeric column), optional ``label`` / ``split`` and
  ``cell_id``.

The labels table (``patient_id,label[,split]``, ``ID`` / ``case_id`` / ``PATIENT`` also name
the patient) may carry clinical columns: ``gender``, ``dob`` and ``lymph_count`` are the
store's own; an ``age`` column (years) stands in for an unknown date of birth; every other
column is kept as a further clinical feature (numbers as they are, text one-hot), imputed
and scaled inside each training fold downstream. Per-slide names (``slide_id``,
``FILENAME``) and pandas' row index (``Unnamed: 0``) are not features.

Everything is checked before anything is written (two passes over the files: check and
digest, then write), and the store is built under a temporary name and renamed, so bad
input leaves nothing behind. The encoder id is ``NAME-<digest of the float16 features>``,
cells are ``<patient_id>/<row>``. Features are stored as float16, as every encoder's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cellbag.data.cohort import check_patient_id, natural_key
from cellbag.store.errors import FeatureImportError

if TYPE_CHECKING:
    from cellbag.store.feature_store import Store

FLOAT16_MAX = 65504.0
H5_SUFFIXES = (".h5", ".hdf5")
FEATURE_KEYS = ("features", "feats")  # CLAM / TRIDENT, STAMP
PATIENT_ALIASES = ("patient_id", "id", "case_id", "patient")
RESERVED = ("patient_id", "split", "label", "gender", "dob", "lymph_count", "n_cells", "offsets")
ID_COLUMNS = ("slide_id", "filename")  # per-slide names in CLAM / STAMP tables, not features
MAX_CATEGORIES = 20


@dataclass
class Bag:
    """One patient's features: where they come from and how to read them."""

    patient_id: str
    file: str
    n: int
    dim: int
    read: Callable[[], tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]
    """Returns (features (n, dim), cell ids or None, coords (n, k) or None)."""


# ------------------------------------------------------------------------------ sources
def _h5_features(f: Any, file: Path) -> Any:
    for key in FEATURE_KEYS:
        if key in f:
            return f[key]
    raise FeatureImportError(
        f"{file}: no `features` (CLAM/TRIDENT) or `feats` (STAMP) dataset "
        f"(has: {', '.join(f.keys()) or 'nothing'})"
    )


def _h5_read(file: Path, pid: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    import h5py

    with h5py.File(file, "r") as f:
        x = np.asarray(_h5_features(f, file)[()])
        if x.ndim == 3 and x.shape[0] == 1:
            x = x[0]
        coords = np.asarray(f["coords"][()]) if "coords" in f else None
        if coords is not None and coords.ndim == 3 and coords.shape[0] == 1:
            coords = coords[0]
        ids = None
        if "cell_ids" in f:
            ids = np.asarray(
                [v.decode() if isinstance(v, bytes) else str(v) for v in f["cell_ids"]]
            )
    if coords is not None and (coords.ndim != 2 or len(coords) != len(x)):
        raise FeatureImportError(
            f"{file}: patient {pid}: coords of shape {coords.shape} for {len(x)} instances"
        )
    if ids is not None and (len(ids) != len(x) or len(set(ids)) != len(ids)):
        ids = None
    return x, ids, coords


def available_memory() -> int:
    """Bytes of memory this process may still use (physical memory when unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError):  # pragma: no cover - psutil is a dependency of torch
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _check_fits_in_memory(file: Path, pid: str, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse, before reading it, a bag whose declared size (read, then as float32 and
    float16 copies) exceeds the memory left: a corrupt or hostile header is one line."""
    need = int(np.prod(shape, dtype=object)) * (itemsize + 6)
    have = available_memory()
    if need > have:
        raise FeatureImportError(
            f"{file}: patient {pid}: features declared as {shape[0]} x {shape[1]} would need "
            f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB of memory left"
        )


def h5_bags(folder: Path) -> tuple[list[Bag], str]:
    """The bags of a folder of per-patient HDF5 files, and the layout found."""
    import h5py

    layout = "h5"
    if (folder / "h5_files").is_dir():
        folder, layout = folder / "h5_files", "clam"
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in H5_SUFFIXES and p.name[0] != "."),
        key=lambda p: natural_key(p.stem),
    )
    if not files:
        raise FeatureImportError(f"{folder}: no .h5 files (expected <patient_id>.h5)")
    bags: list[Bag] = []
    seen: dict[str, Path] = {}
    for file in files:
        pid = file.stem
        if pid in seen:
            raise FeatureImportError(
                f"{file}: patient {pid} is duplicated (also in {seen[pid].name})"
            )
        seen[pid] = file
        try:
            with h5py.File(file, "r") as f:
                ds = _h5_features(f, file)
                shape = ds.shape
                itemsize = ds.dtype.itemsize
                if layout == "h5" and ds.name == "/feats":
                    layout = "stamp"
        except OSError as e:
            raise FeatureImportError(
                f"{file}: patient {pid}: not a readable HDF5 file ({e})"
            ) from None
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2:
            raise FeatureImportError(
                f"{file}: patient {pid}: features of shape {shape}, expected (n, dim)"
            )
        _check_fits_in_memory(file, pid, shape, itemsize)
        bags.append(
            Bag(pid, str(file), int(shape[0]), int(shape[1]), lambda f=file, p=pid: _h5_read(f, p))
        )
    return bags, layout


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            try:
                return pd.read_parquet(path)
            except ImportError:
                raise FeatureImportError(
                    f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
                ) from None
        return pd.read_csv(path)
    except FeatureImportError:
        raise
    except (OSError, ValueError) as e:  # pandas' parser errors are ValueErrors
        raise FeatureImportError(f"{path}: cannot read the table ({e})") from None


def _patient_column(df: pd.DataFrame, path: Path, aliases: Sequence[str]) -> str:
    lower = {str(c).lower(): c for c in df.columns}
    for a in aliases:
        if a in lower:
            return lower[a]
    raise FeatureImportError(
        f"{path}: no patient column ({' or '.join(aliases)}); columns: "
        f"{', '.join(map(str, df.columns[:12]))}"
    )


def table_bags(path: Path) -> tuple[list[Bag], pd.DataFrame | None]:
    """The bags of an instance table, and its per-patient label/split columns (if any)."""
    df = _read_table(path)
    if df.empty:
        raise FeatureImportError(f"{path}: the table has no rows")
    pcol = _patient_column(df, path, ("patient_id",))
    if df[pcol].isna().any():
        row = int(np.flatnonzero(df[pcol].isna().to_numpy())[0])
        raise FeatureImportError(f"{path}: row {row + 2} has no patient_id")
    df[pcol] = df[pcol].astype(str)
    lower = {str(c).lower(): c for c in df.columns}
    meta_cols = [lower[c] for c in ("label", "split") if c in lower]
    id_col = lower.get("cell_id")
    fcols = [c for c in df.columns if re.fullmatch(r"f\d+", str(c))]
    if fcols:
        fcols.sort(key=lambda c: int(str(c)[1:]))
    else:
        skip = {pcol, *meta_cols, id_col}
        fcols = [
            c
            for c in df.columns
            if c not in skip
            and not str(c).startswith("Unnamed:")  # a row index written by pandas
            and pd.api.types.is_numeric_dtype(df[c])
        ]
    if not fcols:
        raise FeatureImportError(f"{path}: no feature columns (f0, f1, ... or numeric columns)")
    bad = [c for c in fcols if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise FeatureImportError(f"{path}: feature column {bad[0]} is not numeric")
    values = df[fcols].to_numpy(dtype=np.float32)
    groups = df.groupby(pcol, sort=False).indices
    bags = []
    for pid in sorted(groups, key=natural_key):
        rows = groups[pid]
        ids = None if id_col is None else df[id_col].astype(str).to_numpy()[rows]
        if ids is not None and len(set(ids)) != len(ids):
            ids = None

        def read(rows=rows, ids=ids):
            return values[rows], ids, None

        bags.append(Bag(pid, str(path), len(rows), len(fcols), read))
    labels = None
    if meta_cols:
        per = df[[pcol, *meta_cols]].drop_duplicates()
        dup = per[pcol].duplicated(keep=False)
        if dup.any():
            pid = per.loc[dup, pcol].iloc[0]
            raise FeatureImportError(
                f"{path}: patient {pid}: its rows disagree on {'/'.join(map(str, meta_cols))}"
            )
        labels = per.rename(columns={pcol: "patient_id"})
        labels.columns = [str(c).lower() for c in labels.columns]
    return bags, labels


# ------------------------------------------------------------------------------ labels
def _extra_clinical(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Further clinical columns as floats: numbers as they are, text one-hot."""
    out = {}
    for c in df.columns:
        col = df[c]
        name = str(c)
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().sum() == col.notna().sum():
            out[name] = num.astype(float)
            continue
        cats = sorted(col.dropna().astype(str).unique())
        if len(cats) > MAX_CATEGORIES:
            raise FeatureImportError(
                f"{where}: clinical column {name!r} is text with {len(cats)} distinct values "
                f"(at most {MAX_CATEGORIES} are one-hot encoded); drop or encode it"
            )
        for cat in cats:
            out[f"{name}={cat}"] = (col.astype(str) == cat).where(col.notna()).astype(float)
    return pd.DataFrame(out, index=df.index)


def patients_table(
    labels: pd.DataFrame | None, patient_ids: Sequence[str], where: str
) -> pd.DataFrame:
    """One row per patient with features: patient_id, split, label (Int64), gender, dob,
    lymph_count, then further clinical columns (floats); train patients first."""
    from cellbag.data.cohort import parse_count, parse_dob, parse_gender, parse_label

    pids = [str(p) for p in patient_ids]
    labels = pd.DataFrame({"patient_id": pids}) if labels is None else labels.copy()
    pcol = _patient_column(labels, Path(where), PATIENT_ALIASES)
    labels = labels.rename(columns={pcol: "patient_id"})
    labels["patient_id"] = labels["patient_id"].astype(str).str.strip()
    dup = labels["patient_id"].duplicated()
    if dup.any():
        pid = labels.loc[dup, "patient_id"].iloc[0]
        raise FeatureImportError(f"{where}: patient {pid} is listed twice")
    unknown = sorted(set(labels["patient_id"]) - set(pids), key=natural_key)
    if unknown:
        more = f" ({len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise FeatureImportError(f"{where}: patient {unknown[0]} has a label but no features{more}")
    lower = {str(c).strip().lower(): c for c in labels.columns if c != "patient_id"}
    aliases = {
        "label": ("label",),
        "split": ("split",),
        "gender": ("gender", "sex"),
        "dob": ("dob", "date_of_birth"),
        "lymph_count": ("lymph_count",),
    }
    take = {k: next((lower[a] for a in al if a in lower), None) for k, al in aliases.items()}
    take = {k: v for k, v in take.items() if v is not None}
    ignored = set(take.values()) | {lower[c] for c in ID_COLUMNS if c in lower}
    rest = [
        c
        for c in labels.columns
        if c != "patient_id" and c not in ignored and not str(c).startswith("Unnamed:")
    ]  # "Unnamed: 0": a row index written by pandas, not a clinical value
    df = pd.DataFrame({"patient_id": pids}).merge(
        labels.rename(columns={v: k for k, v in take.items()}), how="left", on="patient_id"
    )
    parsers = {
        "label": (parse_label, pd.NA),
        "gender": (parse_gender, None),
        "dob": (parse_dob, pd.NaT),
        "lymph_count": (parse_count, np.nan),
    }
    out = pd.DataFrame({"patient_id": pids})
    for col, (parse, missing) in parsers.items():
        if col in df:
            out[col] = [
                parse(v, file=where, patient_id=p) for v, p in zip(df[col], pids, strict=True)
            ]
        else:
            out[col] = missing
    out["label"] = out["label"].astype("Int64")
    out["dob"] = pd.to_datetime(out["dob"])
    out["lymph_count"] = out["lymph_count"].astype(float)
    split = np.where(out["label"].isna(), "test", "train").astype(object)
    if "split" in df:
        given = df["split"].astype("string").str.strip().str.lower()
        bad = given.notna() & ~given.isin(["train", "test"])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise FeatureImportError(
                f"{where}: patient {pids[i]}: split {df['split'].iloc[i]!r} is not train or test"
            )
        split = np.where(given.isna().to_numpy(), split, given.fillna("").to_numpy())
    out.insert(1, "split", split.astype(str))
    wrong = (out["split"] == "train") & out["label"].isna()
    if wrong.any():
        pid = out.loc[wrong, "patient_id"].iloc[0]
        raise FeatureImportError(f"{where}: patient {pid}: split train but no label")
    if rest:
        extra = _extra_clinical(df[rest], where)
        clash = [c for c in extra.columns if c.lower() in RESERVED]
        if clash:
            raise FeatureImportError(f"{where}: clinical column {clash[0]!r} is a reserved name")
        out = pd.concat([out, extra], axis=1)
    order = sorted(
        range(len(out)), key=lambda i: (out["split"].iat[i] != "train", natural_key(pids[i]))
    )
    return out.iloc[order].reset_index(drop=True)


# ------------------------------------------------------------------------------ writing
def _check(bag: Bag, x: np.ndarray, dim: int, first: Bag) -> np.ndarray:
    """Validate one bag's array; return it as float16."""
    where = f"{bag.file}: patient {bag.patient_id}"
    if x.ndim != 2 or len(x) == 0:
        raise FeatureImportError(f"{where}: no instances (features of shape {x.shape})")
    if x.shape[1] != dim:
        raise FeatureImportError(
            f"{where}: features have dim {x.shape[1]}, but {first.file} "
            f"(patient {first.patient_id}) has {dim}"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise FeatureImportError(f"{where}: features of type {x.dtype} are not numbers")
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise FeatureImportError(f"{where}: NaN or inf in the features (row {row})")
    big = np.abs(x) > FLOAT16_MAX
    if big.any():
        row = int(np.argwhere(big)[0][0])
        raise FeatureImportError(
            f"{where}: feature values beyond float16's range (row {row}); rescale them"
        )
    return x.astype(np.float16)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "imported"


def _prepare_target(path: str, force: bool) -> str | None:
    """Refuse to overwrite what the user owns; return a temporary sibling to build in."""
    from cellbag.store.feature_store import Store, _is_url, _norm_path, check_replaceable

    path = _norm_path(path)
    if _is_url(path):
        if Store.exists(path) and not force:
            raise FeatureImportError(f"{path}: a store already exists here (--force replaces it)")
        return None
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise FeatureImportError(f"{path}: exists and is not a folder")
        if any(p.iterdir()):
            if not Store.exists(path):
                raise FeatureImportError(
                    f"{path}: folder is not empty and not a cellbag store; choose a new folder"
                )
            if not force:
                raise FeatureImportError(
                    f"{path}: a store already exists here (--force replaces it)"
                )
            check_replaceable(path)  # --force replaces a store, never the user's files
    p.parent.mkdir(parents=True, exist_ok=True)
    return str(p.parent / f".{p.name}.import-{os.getpid()}")


def write_store(
    path: str | os.PathLike,
    bags: Sequence[Bag],
    patients: pd.DataFrame,
    name: str,
    source: str,
    layout: str,
    force: bool = False,
    metadata: dict[str, Any] | None = None,
    chunk_rows: int | None = None,
    block_rows: int | None = None,
) -> Store:
    """Check every bag, then write a new store holding them as one encoder (see module doc)."""
    from cellbag.data import Cohort
    from cellbag.store.feature_store import (
        DEFAULT_BLOCK_ROWS,
        DEFAULT_CHUNK_ROWS,
        Store,
        remove_store,
    )

    by_pid = {b.patient_id: b for b in bags}
    order = [by_pid[p] for p in patients["patient_id"]]
    first = order[0]
    dim = first.dim
    # pass 1: check everything, digest the float16 bytes (by patient id: order-free)
    h = hashlib.sha256()
    for bag in sorted(order, key=lambda b: b.patient_id):
        x, ids, coords = bag.read()
        x16 = _check(bag, np.asarray(x), dim, first)
        h.update(f"{bag.patient_id}:{x16.shape}".encode())
        h.update(np.ascontiguousarray(x16).tobytes())
    digest = h.hexdigest()
    name = _safe_name(name)
    encoder_id = f"{name}-{digest[:12]}"
    tmp = _prepare_target(str(path), force)
    target = tmp or str(path)
    cell_ids, coords_all = [], []
    for bag in order:
        _, ids, coords = bag.read()
        cell_ids.extend(ids if ids is not None else [f"{bag.patient_id}/{j}" for j in range(bag.n)])
        coords_all.append(coords)
    if len(set(cell_ids)) != len(cell_ids):
        cell_ids = [f"{b.patient_id}/{j}" for b in order for j in range(b.n)]
    cells = pd.DataFrame(
        {
            "cell_id": cell_ids,
            "patient_id": [b.patient_id for b in order for _ in range(b.n)],
            "path": "",
        }
    )
    base = patients[["patient_id", "split", "label", "gender", "dob", "lymph_count"]]
    cohort = Cohort(root=Path(source), layout=f"import:{layout}", patients=base, cells=cells)
    chunk = chunk_rows or DEFAULT_CHUNK_ROWS
    block = block_rows or max(chunk, DEFAULT_BLOCK_ROWS // chunk * chunk)
    try:
        if tmp and Path(tmp).exists():
            shutil.rmtree(tmp)
        store = Store.create(target, cohort, chunk_rows=chunk, block_rows=block)
        _write_extras(store, patients, coords_all)
        meta = {
            "name": name,
            "model": name,
            "weights": "imported",
            "weights_sha256": digest,
            "source": "import",
            "import_layout": layout,
            "feature_digest": digest,
            **(metadata or {}),
        }
        store.init_encoder(encoder_id, dim, meta)
        pending: list[np.ndarray] = []
        n_pending, blk = 0, 0
        for bag in order:
            pending.append(np.asarray(bag.read()[0], dtype=np.float32))
            n_pending += len(pending[-1])
            while blk < store.n_blocks:
                a, b = store.block_range(blk)
                if n_pending < b - a:
                    break
                rows = np.concatenate(pending)
                store.write_block(encoder_id, blk, rows[: b - a])
                pending, n_pending, blk = [rows[b - a :]], len(rows) - (b - a), blk + 1
        store.mark_complete(encoder_id)
    except BaseException:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tmp:
        final = Path(str(path)).expanduser().resolve()
        if Store.exists(final):
            remove_store(final)  # the store the user asked to replace (its own entries only)
        elif final.exists():
            os.rmdir(final)  # an empty folder (a non-empty one was refused above)
        os.replace(tmp, final)
        store = Store.open(final, mode="r")
    return store


def _write_extras(store: Store, patients: pd.DataFrame, coords: list[np.ndarray | None]) -> None:
    """Further clinical columns and known instance positions, beside the store's own."""
    from cellbag.store.feature_store import new_array, record_tables_digest
    from cellbag.store.schema import write_schema

    root = store.zarr_group
    extra = [c for c in patients.columns if c not in RESERVED]
    if extra:
        vals = patients[extra].to_numpy(dtype=np.float64)
        a = new_array(root["patients"], "clinical_extra", vals)
        a.attrs["columns"] = extra
    if all(c is not None for c in coords) and len({c.shape[1] for c in coords}) == 1:
        allc = np.concatenate(coords)
        dtype = "int64" if np.issubdtype(allc.dtype, np.integer) else "float64"
        chunks = (min(len(allc), 65536), allc.shape[1])
        new_array(root["cells"], "coords", allc.astype(dtype), chunks=chunks)
    record_tables_digest(root)
    write_schema(root)


# ------------------------------------------------------------------------------ entry points
def import_features(
    source: str | os.PathLike,
    store: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    name: str = "imported",
    force: bool = False,
) -> Store:
    """Import a folder of per-patient HDF5 files or an instance table into a new store."""
    src = Path(source)
    if not src.exists():
        raise FeatureImportError(f"{src}: no such file or folder")
    if src.is_dir():
        bags, layout = h5_bags(src)
        table_labels = None
    else:
        bags, table_labels = table_bags(src)
        layout = "table"
    for bag in bags:  # ids become file names (export-h5): refuse unsafe ones at the door
        check_patient_id(bag.patient_id, bag.file, FeatureImportError)
    where = str(src)
    lab = table_labels
    if labels is not None:
        lp = Path(labels)
        if not lp.is_file():
            raise FeatureImportError(f"{lp}: no such labels file")
        lab = _read_table(lp)
        if lab.empty:
            raise FeatureImportError(f"{lp}: the labels table has no rows")
        where = str(lp)
    pts = patients_table(lab, [b.patient_id for b in bags], where)
    if table_labels is not None and labels is not None:
        _agree(pts, patients_table(table_labels, [b.patient_id for b in bags], str(src)), src)
    return write_store(store, bags, pts, name, str(src.resolve()), layout, force=force)


def _agree(pts: pd.DataFrame, table: pd.DataFrame, src: Path) -> None:
    a = pts.set_index("patient_id")["label"]
    b = table.set_index("patient_id")["label"].reindex(a.index)
    diff = a.notna() & b.notna() & (a != b)
    if diff.any():
        pid = diff[diff].index[0]
        raise FeatureImportError(
            f"{src}: patient {pid}: label {b[pid]} differs from the labels file's {a[pid]}"
        )


def from_arrays(
    path: str | os.PathLike,
    bags: Sequence[np.ndarray],
    labels: Sequence[Any] | np.ndarray | None,
    patient_ids: Sequence[str] | None = None,
    clinical: pd.DataFrame | np.ndarray | None = None,
    name: str = "arrays",
    splits: Sequence[str] | None = None,
    force: bool = False,
) -> Store:
    """A new store from in-memory bags (``cellbag.store.from_arrays``)."""
    n = len(bags)
    if n == 0:
        raise FeatureImportError(f"{path}: no bags given")
    pids = [str(p) for p in patient_ids] if patient_ids is not None else [f"P{i}" for i in range(n)]
    if len(pids) != n:
        raise FeatureImportError(f"{path}: {len(pids)} patient ids for {n} bags")
    for pid in pids:
        check_patient_id(pid, path, FeatureImportError)
    dup = pd.Series(pids).duplicated()
    if dup.any():
        raise FeatureImportError(
            f"{path}: patient {pids[int(np.flatnonzero(dup)[0])]} is duplicated"
        )
    table = pd.DataFrame({"patient_id": pids})
    if labels is not None:
        lab = list(labels)
        if len(lab) != n:
            raise FeatureImportError(f"{path}: {len(lab)} labels for {n} bags")
        table["label"] = [None if (v is None or v is pd.NA or v == -1) else v for v in lab]
    if splits is not None:
        table["split"] = list(splits)
    if clinical is not None:
        if isinstance(clinical, pd.DataFrame):
            c = clinical.reset_index(drop=True)
            pc = next((k for k in c.columns if str(k).lower() in PATIENT_ALIASES), None)
            if pc is not None:
                c = c.set_index(c[pc].astype(str)).drop(columns=[pc]).reindex(pids)
                c = c.reset_index(drop=True)
        else:
            m = np.asarray(clinical, dtype=np.float64).reshape(n, -1)
            c = pd.DataFrame(m, columns=[f"clinical_{j}" for j in range(m.shape[1])])
        table = pd.concat([table, c.drop(columns=["label"], errors="ignore")], axis=1)
    arrays = [np.asarray(b) for b in bags]
    items = [
        Bag(p, "arrays", len(x), x.shape[1] if x.ndim == 2 else -1, lambda x=x: (x, None, None))
        for p, x in zip(pids, arrays, strict=True)
    ]
    pts = patients_table(table, pids, "arrays")
    return write_store(path, items, pts, name, "arrays", "arrays", force=force)
