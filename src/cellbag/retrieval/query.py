"""Nearest-cell queries: by a cell of the store or by a new image, with filters."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellbag.featurize.images import to_rgb  # the featurizer's own conversion
from cellbag.retrieval.errors import RetrievalError
from cellbag.retrieval.faiss_index import CellIndex, PositionFilter
from cellbag.retrieval.store_index import (
    RetrievalWarning,
    _store_url,
    load_index,
    ok_cells,
)

SPLITS = ("all", "train", "test")
COLUMNS = ["rank", "cell_id", "patient_id", "split", "label", "similarity", "path"]


def open_image(path: str | Path) -> Any:
    """Open an image file (local path or fsspec URL) as an RGB PIL image.

    Any mode is converted by :func:`to_rgb` (alpha on white, 16-bit grayscale rescaled).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if "://" in str(path):
            import fsspec

            with fsspec.open(str(path), "rb") as f:
                img = Image.open(f)
                img.load()
        else:
            img = Image.open(path)
            img.load()
    except FileNotFoundError as e:
        raise RetrievalError(f"image {path} does not exist") from e
    except (UnidentifiedImageError, OSError) as e:
        raise RetrievalError(f"image {path} cannot be read as an image ({e})") from e
    return to_rgb(img)


def load_encoder(store: Any, encoder_id: str) -> Any:
    """The encoder recorded in the store, rebuilt from its metadata (its id must match)."""
    try:
        from cellbag.featurize import encoder_from_metadata
    except ImportError as e:  # pragma: no cover - featurize is part of the package
        raise RetrievalError(
            f"image queries need cellbag.featurize.encoder_from_metadata ({e})"
        ) from e
    encoder = encoder_from_metadata(store.encoder_info(encoder_id))
    if getattr(encoder, "id", encoder_id) != encoder_id:
        raise RetrievalError(
            f"store {_store_url(store)}: the encoder rebuilt from its metadata has id "
            f"{encoder.id}, not {encoder_id} (weights or preprocessing differ); "
            "re-featurize or restore the recorded weights"
        )
    return encoder


def embed_image(store: Any, encoder_id: str, image: Any, encoder: Any = None) -> np.ndarray:
    """Embed one image (path or PIL image) with exactly the encoder recorded in the store:
    ``(1, dim)`` float32. ``encoder``: one already built by :func:`load_encoder`."""
    img = image if hasattr(image, "mode") else open_image(image)  # a bad file fails first
    encoder = encoder if encoder is not None else load_encoder(store, encoder_id)
    vec = np.asarray(encoder.embed([to_rgb(img)]), dtype=np.float32)
    expected = int(store.embeddings(encoder_id).shape[1])
    if vec.shape != (1, expected):
        raise RetrievalError(
            f"encoder {encoder_id} gave an embedding of shape {vec.shape}, the store holds dim "
            f"{expected}"
        )
    return vec


def resolve_encoder(store: Any, encoder_id: str | None) -> str:
    """The encoder meant by an id or a model name, or the store's only encoder when None."""
    from cellbag.store import EncoderNotReady

    try:
        from cellbag.store.resolve import resolve_encoder

        return resolve_encoder(store, encoder_id)
    except EncoderNotReady as e:
        raise RetrievalError(str(e)) from None


class Retriever:
    """A loaded index of one encoder plus the store tables needed to answer queries.

    Hold one to ask many questions without reloading; :func:`neighbors` makes one per call.
    """

    def __init__(
        self,
        store: Any,
        encoder_id: str | None = None,
        *,
        on_stale: str = "rebuild",
        threads: int | None = None,
    ) -> None:
        self.store = store
        self.encoder_id = resolve_encoder(store, encoder_id)
        all_cells = store.cells()
        self.cells = ok_cells(store)
        self.index: CellIndex = load_index(
            store, self.encoder_id, on_stale=on_stale, threads=threads, cells=self.cells
        )
        if not np.array_equal(self.index.rows, self.cells["row"].to_numpy(np.int64)):
            raise RetrievalError(  # guarded by the cells digest; should not happen
                f"index of {self.encoder_id} does not match the cells of store {_store_url(store)}"
                f"; rebuild it with `cellbag index {_store_url(store)} --encoder {self.encoder_id}`"
            )
        self.patients = store.patients().set_index("patient_id")
        # plain arrays over all store rows: a query touches no pandas indexing
        self._id = all_cells["cell_id"].astype(str).to_numpy(dtype=object)
        self._pid = all_cells["patient_id"].astype(str).to_numpy(dtype=object)
        self._path = all_cells["path"].astype(str).to_numpy(dtype=object)
        self._status = all_cells.get("status", pd.Series("ok", index=all_cells.index))
        self._status = self._status.astype(str).to_numpy(dtype=object)
        self._row_of = pd.Index(self._id)
        pid = pd.Series(self._pid)
        self._split_all = pid.map(self.patients["split"]).astype(str).to_numpy(dtype=object)
        self._label_all = pid.map(self.patients["label"]).astype("Int64").array
        # integer codes over index positions make the filter masks cheap at 1M cells
        rows = self.index.rows
        self._patient_code, self._patient_names = pd.factorize(self._pid[rows])
        self._split_code, self._split_names = pd.factorize(self._split_all[rows])
        # cells are sorted by patient: a patient is one run of index positions (when so,
        # --other-patients excludes a range instead of building a mask a query)
        starts = np.flatnonzero(np.diff(self._patient_code, prepend=-1) != 0)
        self._patient_runs = None
        if len(starts) == len(self._patient_names):
            self._patient_runs = np.append(starts, len(rows))
        self._split_bits: dict[int, tuple[np.ndarray, int]] = {}
        self._patient_of = {str(p): i for i, p in enumerate(self._patient_names)}
        self._split_of = {str(v): i for i, v in enumerate(self._split_names)}
        self._encoder: Any = None

    # ------------------------------------------------------------------ helpers
    def _split_filter(self, code: int) -> tuple[np.ndarray, int]:
        """The packed bitmap of one split's positions and their count (made once)."""
        if code not in self._split_bits:
            mask = self._split_code == code
            self._split_bits[code] = (np.packbits(mask, bitorder="little"), int(mask.sum()))
        return self._split_bits[code]

    def _filter(self, split: str, patient: str | None) -> PositionFilter | None:
        """The positions allowed by a split and by leaving out ``patient`` (None: all)."""
        if split == "all" and patient is None:
            return None
        bits, count, code = None, self.index.n, -1
        if split != "all":
            code = self._split_of.get(split, -2)
            bits, count = self._split_filter(code)
        if patient is None:
            return PositionFilter(bits, count)
        pc = self._patient_of.get(str(patient), -2)
        if pc < 0:  # not an indexed patient: nothing to leave out
            return PositionFilter(bits, count)
        if self._patient_runs is None:  # patients not contiguous: a mask
            mask = self._patient_code != pc
            if split != "all":
                mask &= self._split_code == code
            return PositionFilter.from_mask(mask)
        lo, hi = int(self._patient_runs[pc]), int(self._patient_runs[pc + 1])
        gone = hi - lo if bits is None else int(np.count_nonzero(self._split_code[lo:hi] == code))
        return PositionFilter(bits, count - gone, (lo, hi))

    def _describe(self, row: int) -> dict[str, Any]:
        return {
            "cell_id": str(self._id[row]),
            "patient_id": str(self._pid[row]),
            "path": str(self._path[row]),
            "split": str(self._split_all[row]),
            "label": self._label_all[row],
        }

    def _cell_row(self, cell_id: str) -> int:
        try:
            row = self._row_of.get_loc(cell_id)
        except KeyError:
            example = str(self._id[0]) if len(self._id) else "P1/x.jpg"
            raise RetrievalError(
                f"store {_store_url(self.store)} has no cell {cell_id!r} "
                f"(cell ids look like {example!r})"
            ) from None
        if not isinstance(row, int | np.integer):
            raise RetrievalError(f"store {_store_url(self.store)} holds cell {cell_id!r} twice")
        if self._status[row] != "ok":
            raise RetrievalError(
                f"cell {cell_id} of store {_store_url(self.store)} is {self._status[row]}: "
                "it has no embedding"
            )
        return int(row)

    def _query_by_cell(self, cell_id: str) -> tuple[np.ndarray, dict[str, Any]]:
        row = self._cell_row(cell_id)
        vec = self.index.vector(row)
        if vec is None:  # pragma: no cover - every kind built here can reconstruct
            vec = np.asarray(self.store.embeddings(self.encoder_id)[row : row + 1], np.float32)
        return vec, {"kind": "cell", **self._describe(row)}

    def _query_by_image(self, image: Any) -> tuple[np.ndarray, dict[str, Any]]:
        img = image if hasattr(image, "mode") else open_image(image)
        if self._encoder is None:
            self._encoder = load_encoder(self.store, self.encoder_id)
        vec = embed_image(self.store, self.encoder_id, img, self._encoder)
        query: dict[str, Any] = {
            "kind": "image",
            "cell_id": None,
            "patient_id": None,
            "path": None,
            "split": None,
            "label": pd.NA,
        }
        if not hasattr(image, "mode"):
            path = str(image)
            query["path"] = str(Path(path).resolve()) if "://" not in path else path
            match = np.flatnonzero(self._path == query["path"])
            if len(match):  # the image is a cell of the store: its patient is known
                query.update(self._describe(int(match[0])), path=query["path"])
        return vec, query

    # -------------------------------------------------------------------- query
    def query(
        self,
        cell_id: str | None = None,
        image: Any = None,
        k: int = 10,
        other_patients: bool = False,
        split: str = "all",
    ) -> pd.DataFrame:
        """The ``k`` most similar ``ok`` cells (see :func:`neighbors`)."""
        if (cell_id is None) == (image is None):
            raise RetrievalError("give exactly one query: a cell id or an image")
        if split not in SPLITS:
            raise RetrievalError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        if int(k) < 1:
            raise RetrievalError(f"k must be >= 1, got {k}")
        k = int(k)
        if cell_id is not None:
            vec, query = self._query_by_cell(str(cell_id))
        else:
            vec, query = self._query_by_image(image)
        what = []
        if split != "all":
            what.append(f"split {split}")
        if other_patients:
            if query["patient_id"] is None:
                raise RetrievalError(
                    f"--other-patients needs the query's patient: image {query['path'] or '<image>'}"
                    f" is not a cell of store {_store_url(self.store)}"
                )
            what.append(f"patients other than {query['patient_id']}")
        allowed = self._filter(split, query["patient_id"] if other_patients else None)
        n_allowed = self.index.n if allowed is None else allowed.count
        if k > n_allowed:
            scope = " and ".join(what) or "the index"
            warnings.warn(
                f"asked for k={k} neighbours but only {n_allowed} cells match ({scope}) in store "
                f"{_store_url(self.store)}; returning {n_allowed}",
                RetrievalWarning,
                stacklevel=3,
            )
        k_eff = min(k, n_allowed)
        if k_eff == 0:
            return self._frame(np.zeros(0, np.float32), np.zeros(0, np.int64), query, what)
        if allowed is not None and allowed.count == self.index.n:
            allowed = None  # the filters leave everything: no selector
        sims, pos = self.index.search(vec, k_eff, allowed)  # normalises the query
        keep = pos[0] >= 0
        sims, pos = sims[0][keep], pos[0][keep]
        if len(pos) < k_eff:
            warnings.warn(
                f"the {self.index.kind} index of {self.encoder_id} found {len(pos)} of {k_eff} "
                "neighbours under the filters; rebuild with --kind flat for exact search",
                RetrievalWarning,
                stacklevel=3,
            )
        return self._frame(sims, pos, query, what)

    def _frame(
        self, sims: np.ndarray, pos: np.ndarray, query: dict[str, Any], filters: list[str]
    ) -> pd.DataFrame:
        rows = self.index.rows[pos]
        df = pd.DataFrame(
            {
                "rank": np.arange(1, len(pos) + 1, dtype=np.int64),
                "cell_id": self._id[rows],
                "patient_id": self._pid[rows],
                "split": self._split_all[rows],
                "label": self._label_all[rows],
                "similarity": np.clip(sims.astype(np.float64), -1.0, 1.0),
                "path": self._path[rows],
            },
            columns=COLUMNS,
        )
        df.attrs.update(
            {
                "query": query,
                "encoder_id": self.encoder_id,
                "index_kind": self.index.kind,
                "store": _store_url(self.store),
                "filters": ", ".join(filters) or "none",
            }
        )
        return df


def neighbors(
    store: Any,
    encoder_id: str | None = None,
    cell_id: str | None = None,
    image: Any = None,
    k: int = 10,
    other_patients: bool = False,
    split: str = "all",
    *,
    on_stale: str = "rebuild",
    threads: int | None = None,
) -> pd.DataFrame:
    """The ``k`` cells most similar (cosine) to a cell of the store or to a new image.

    ``image`` is a path (or PIL image) embedded with exactly the encoder recorded in the
    store. ``other_patients`` drops the query's patient; ``split`` keeps one split. The
    query cell itself is its own first neighbour unless filtered out. Columns: rank,
    cell_id, patient_id, split, label, similarity, path; ``df.attrs['query']`` describes the
    query. Fewer matching cells than ``k`` returns them all with a :class:`RetrievalWarning`.
    A stale index is rebuilt with a warning (``on_stale='error'`` refuses instead).
    """
    retriever = Retriever(store, encoder_id, on_stale=on_stale, threads=threads)
    return retriever.query(
        cell_id=cell_id, image=image, k=k, other_patients=other_patients, split=split
    )
