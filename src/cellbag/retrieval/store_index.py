"""The retrieval index of one encoder of a store: where it lives, building it, staleness.

Location: a local store keeps its indexes beside itself, ``STORE.indexes/<encoder>/``
(not inside: a plain ``zarr`` listing of the store would warn about non-Zarr files), holding ``index.faiss``, ``rows.npy``
(index position -> store row) and ``index.json`` (kind, parameters, the embeddings
digest, a digest of the indexed cell ids, build time). A store read through an fsspec
URL, or a local one that is not writable, keeps them in the user cache:
``$CELLBAG_CACHE`` or ``$XDG_CACHE_HOME/cellbag`` or ``~/.cache/cellbag``, under
``indexes/<sha1 of the store URL>/<encoder>/``.

Staleness: an index records ``store.embeddings_digest(encoder)`` and a digest of the
``ok`` cell ids it holds. When either differs from the store (re-featurized, cells
changed), a query **rebuilds the index automatically** (same kind as before, with a
warning naming the store and encoder) — or, with ``on_stale='error'`` (CLI
``--no-rebuild``), refuses with :class:`StaleIndexError` naming the command to run.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.retrieval.errors import RetrievalError, StaleIndexError
from cellbag.retrieval.faiss_index import CellIndex, normalize

READ_ROWS = 65_536


class RetrievalWarning(UserWarning):
    """Something a user should know about a query (stale index rebuilt, fewer hits than k)."""


def _store_url(store: Any) -> str:
    return str(store.path)


def is_remote(store: Any) -> bool:
    """True when the store is read through an fsspec URL other than ``file://``."""
    url = _store_url(store)
    return "://" in url and not url.startswith("file://")


def _local_path(store: Any) -> Path:
    url = _store_url(store)
    return Path(url[len("file://") :] if url.startswith("file://") else url)


def cache_root() -> Path:
    """The user cache folder of cellbag."""
    if os.environ.get("CELLBAG_CACHE"):
        return Path(os.environ["CELLBAG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cellbag"


def _safe_name(encoder_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_id).strip("._") or "encoder"
    if safe != encoder_id:
        safe += "-" + hashlib.sha1(encoder_id.encode()).hexdigest()[:8]
    return safe


def index_dirs(store: Any, encoder_id: str) -> list[Path]:
    """Where the index of ``encoder_id`` may live, preferred first."""
    name = _safe_name(encoder_id)
    url = _store_url(store)
    cached = cache_root() / "indexes" / hashlib.sha1(url.encode()).hexdigest()[:16] / name
    if is_remote(store):
        return [cached]
    local = _local_path(store)
    return [local.with_name(local.name + ".indexes") / name, cached]


def _writable(directory: Path) -> bool:
    probe = directory
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def index_dir(store: Any, encoder_id: str) -> Path:
    """The folder an index of ``encoder_id`` is (or would be) saved in."""
    dirs = index_dirs(store, encoder_id)
    for d in dirs:
        if CellIndex.read_info(d) is not None:
            return d
    for d in dirs:
        if _writable(d):
            return d
    raise RetrievalError(
        f"store {_store_url(store)}: no writable place for the index of {encoder_id}"
    )


def ok_cells(store: Any) -> pd.DataFrame:
    """The store's cells table with its row number (``row``), only ``ok`` cells."""
    cells = store.cells()
    rows = np.arange(len(cells), dtype=np.int64)
    cells = cells.assign(row=rows)
    if "status" in cells.columns:
        cells = cells[cells["status"].astype(str) == "ok"]
    return cells


def cells_digest(cell_ids: pd.Series) -> str:
    """Digest of an ordered list of cell ids (what the index positions stand for)."""
    h = hashlib.sha1()
    for part in np.array_split(cell_ids.astype(str).to_numpy(), max(1, len(cell_ids) // 100_000)):
        h.update("\n".join(part.tolist()).encode())
        h.update(b"\n")
    return h.hexdigest()


def _row_chunks(
    store: Any, encoder_id: str, rows: np.ndarray
) -> Callable[[], Iterator[np.ndarray]]:
    """Chunk source reading the store's embeddings block by block, keeping ``rows``."""
    arr = store.embeddings(encoder_id)
    n_total = int(arr.shape[0])
    where = f"store {_store_url(store)} encoder {encoder_id}"

    def gen() -> Iterator[np.ndarray]:
        for start in range(0, n_total, READ_ROWS):
            stop = min(start + READ_ROWS, n_total)
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi == lo:
                continue
            block = store.read_rows(encoder_id, start, stop)  # checked: damage is one line
            try:
                yield normalize(block[rows[lo:hi] - start], where=where)
            except RetrievalError as e:
                raise RetrievalError(f"{e} (store row offset {start})") from None

    return gen


def _row_sampler(store: Any, encoder_id: str, rows: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """Training sample reader: random whole storage chunks (seeded) until ``size`` ok rows.

    Reading whole chunks touches ~``size / n`` of the store instead of all of it.
    """
    arr = store.embeddings(encoder_id)
    step = int(arr.chunks[0]) if getattr(arr, "chunks", None) else 64
    where = f"store {_store_url(store)} encoder {encoder_id}"

    def sample(size: int, seed: int) -> np.ndarray:
        if size >= len(rows):
            picked = rows
        else:
            rng = np.random.default_rng(seed)
            chunk_of = rows // step
            ids, counts = np.unique(chunk_of, return_counts=True)
            order = rng.permutation(len(ids))
            need = int(np.searchsorted(np.cumsum(counts[order]), size)) + 1
            chosen = np.isin(chunk_of, ids[order[:need]])
            picked = rows[chosen]
        block = np.asarray(arr.oindex[picked] if len(picked) < len(rows) else arr[:], np.float32)
        if len(picked) == len(rows) and len(rows) != arr.shape[0]:
            block = block[rows]
        return normalize(block[:size], where=where)

    return sample


def build_index(
    store: Any,
    encoder_id: str,
    kind: str = "auto",
    *,
    seed: int = 0,
    threads: int | None = None,
    save: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    **overrides: int,
) -> CellIndex:
    """Build (and by default save) the cosine index of ``encoder_id`` over ``ok`` cells.

    ``kind``: ``auto`` (exact up to ``EXACT_MAX`` vectors, IVF above), ``flat``, ``ivf`` or
    ``hnsw``; ``overrides`` set parameters (``nlist``, ``nprobe``, ``M``, ``ef_search``...).
    """
    store.require_complete(encoder_id)
    cells = ok_cells(store)
    if len(cells) == 0:
        raise RetrievalError(f"store {_store_url(store)}: no readable (ok) cells to index")
    digest = store.embeddings_digest(encoder_id)
    arr = store.embeddings(encoder_id)
    dim = int(arr.shape[1])
    rows = cells["row"].to_numpy(np.int64)
    index = CellIndex.build(
        _row_chunks(store, encoder_id, rows),
        len(rows),
        dim,
        rows=rows,
        kind=kind,
        seed=seed,
        threads=threads,
        progress=progress,
        sampler=_row_sampler(store, encoder_id, rows),
        **overrides,
    )
    index.meta.update(
        {
            "encoder_id": encoder_id,
            "store": _store_url(store),
            "embeddings_digest": digest,
            "cells_digest": cells_digest(cells["cell_id"]),
            "requested_kind": kind,
            "overrides": dict(overrides),
        }
    )
    if save:
        index.save(index_dir(store, encoder_id))
    return index


def stale_reason(
    store: Any, encoder_id: str, info: dict[str, Any], cells: pd.DataFrame
) -> str | None:
    """Why a saved index does not match the store any more, or None when it does."""
    if info.get("encoder_id") != encoder_id:
        return f"it was built for encoder {info.get('encoder_id')}"
    if info.get("embeddings_digest") != store.embeddings_digest(encoder_id):
        return "the embeddings changed since it was built (re-featurized)"
    if info.get("cells_digest") != cells_digest(cells["cell_id"]):
        return "the store's readable cells changed since it was built"
    return None


def load_index(
    store: Any,
    encoder_id: str,
    *,
    on_stale: str = "rebuild",
    threads: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    cells: pd.DataFrame | None = None,
) -> CellIndex:
    """The saved index of ``encoder_id``, built first when missing, checked for staleness.

    ``on_stale='rebuild'`` rebuilds a stale index with a :class:`RetrievalWarning`;
    ``on_stale='error'`` raises :class:`StaleIndexError`. A missing index is built
    (kind ``auto``) either way.
    """
    if on_stale not in ("rebuild", "error"):
        raise RetrievalError(f"on_stale must be 'rebuild' or 'error', got {on_stale!r}")
    store.require_complete(encoder_id)
    directory = index_dir(store, encoder_id)
    info = CellIndex.read_info(directory)
    if info is None:
        return build_index(store, encoder_id, "auto", threads=threads, progress=progress)
    cells = ok_cells(store) if cells is None else cells
    reason = stale_reason(store, encoder_id, info, cells)
    if reason is None:
        return CellIndex.load(directory, threads=threads)
    where = f"index {directory} of store {_store_url(store)}, encoder {encoder_id}"
    if on_stale == "error":
        raise StaleIndexError(
            f"stale {where}: {reason}; rebuild it with "
            f"`cellbag index {_store_url(store)} --encoder {encoder_id}`"
        )
    kind = info.get("requested_kind", info.get("kind", "auto"))
    warnings.warn(f"rebuilding stale {where}: {reason}", RetrievalWarning, stacklevel=2)
    return build_index(
        store,
        encoder_id,
        kind,
        threads=threads,
        progress=progress,
        seed=int(info.get("seed", 0)),
        **info.get("overrides", {}),
    )
