"""A cosine-similarity faiss index over unit-normalised float32 vectors (no store knowledge).

Kinds, and how ``auto`` chooses from ``n``, the number of indexed vectors:

- ``flat`` -- exact inner-product search (``IndexFlatIP``, float32). ``auto`` picks it when
  ``n <= EXACT_MAX`` (50,000). An exact query costs time linear in ``n`` (100k x 384-d:
  tens of ms on the shared 2-core machine, see the benchmark), so the threshold keeps
  exact answers, with no training, for cohort-sized stores (~200 patients x 80 cells).
- ``ivf`` -- an inverted file, picked by ``auto`` above ``EXACT_MAX``. ``nlist =
  round(sqrt(n))`` lists (1,000 at 1M; at most ``n // 39``), trained by seeded spherical
  k-means (10 iterations) on ``min(n, 40 * nlist)`` rows (whole storage chunks drawn at
  random, so building reads the store about once); ``nprobe = clip(round(nlist / 64), 8,
  nlist)`` lists scanned a query (16 at 1M). ``sqrt(n)`` rather than the textbook ``4 *
  sqrt(n)``: 4,096 lists took 100-115 s to assign 1M vectors on 2 shared cores and gave
  recall@10 0.945-0.972 at nprobe 16-32 on the benchmark's 2,048 sub-clusters.

  What the lists hold. From ``PQ_MIN`` (20,000) vectors of a dimension divisible by 8:
  4-bit fast-scan PQ codes of the residuals, 4 dimensions a sub-quantizer (``pq_m = dim /
  4``: 48 bytes a 384-d vector, ``IndexIVFPQFastScan``), and each query's ``k_factor * k``
  (16 * k) best candidates are re-ranked exactly on a float16 copy of the vectors
  (``IndexRefine``), which also answers ``reconstruct`` (queries by cell): similarities are
  the float16 ones (within ~1e-3 of float32), the store's own precision. Below that, or
  for other dimensions, the lists hold the float16 vectors (``IndexIVFScalarQuantizer``,
  ``QT_fp16``, the only kind before; ``pq_m=0`` still builds it). Why: a single query over
  float16 lists is compute-bound, not memory-bound (8-bit codes were no faster), and the
  k-means lists are unbalanced (median 295 vectors, p95 4,833 at 1M; queries land in the
  big ones), so nprobe 16 scans ~60,000 vectors at ~20 ns each: p50 1.15 ms on this
  machine. Fast-scan distances from 4-bit lookup tables cost a fraction of that. Measured
  at 1M x 384 in one run of ``benchmarks/retrieval.py`` on the 2 shared cores at load ~9:
  PQ + float16 re-ranking p50 0.27 ms, p95 0.35 ms, recall@10 0.996, build 50 s, 795 MiB;
  float16 lists p50 1.15 ms, p95 5.3 ms, recall@10 0.996, build 25 s, 757 MiB. nprobe
  8 / 16 / 32: recall@10 0.985 / 0.996 / 0.999 at p50 0.26 / 0.29 / 0.35 ms. The PQ's 96
  small k-means train on one thread (OpenMP barriers on a busy machine made them 24 s).
- ``hnsw`` -- ``IndexHNSWFlat`` (inner product), ``M = 32`` (48 above 2M vectors),
  ``efConstruction = 80``, ``efSearch = 128``. Never picked by ``auto``: its queries are
  the fastest (0.7 ms p50, recall@10 0.996 at 100k), but building took 60 s per 100k
  x 384-d vectors on the shared 2 cores, so well over 10 minutes at 1M.

Vectors are L2-normalised before indexing, so inner product is cosine similarity.
Filters (split, other patients) are applied inside faiss: a :class:`PositionFilter` holds a
split's packed bitmap (made once per split) minus the query patient's run of positions
(``IDSelectorRange``), so a filtered query builds no mask over the index (a 1M-cell mask,
its count and packing cost 1.1 ms a query); approximate kinds widen their search when a
filter leaves fewer than k hits. Threads are set explicitly (:func:`set_threads`); a
single query runs on one thread (faiss parallelises over queries: 1 or 2 OpenMP threads
give the same single-query latency, 0.23 ms, and a second thread only risks waiting for a
busy core). The query's float16 -> float32 conversion and normalisation cost 0.01 ms;
search parameters without a filter are made once per index.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellbag.retrieval.errors import RetrievalError

KINDS = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX = 50_000
PQ_MIN = 20_000  # IVF indexes of at least this many vectors scan 4-bit PQ codes
PQ_MIN_TRAIN = 1_000  # ... when trained on at least this many (16 codes a sub-quantizer)
K_FACTOR = 16
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.npy"
INFO_FILE = "index.json"


def default_threads() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """Set faiss' OpenMP thread count explicitly (default: the usable cores); return it."""
    import faiss

    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise RetrievalError(f"threads must be >= 1, got {threads}")
    faiss.omp_set_num_threads(n)
    return n


_TUNABLE = {
    "flat": (),
    "ivf": ("nlist", "nprobe", "train_size", "niter", "pq_m", "k_factor"),
    "hnsw": ("M", "ef_construction", "ef_search"),
}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class IndexParams:
    """What kind of index to build and its size-dependent parameters."""

    kind: str
    nlist: int = 0
    nprobe: int = 0
    train_size: int = 0
    niter: int = 0
    M: int = 0
    ef_construction: int = 0
    ef_search: int = 0
    pq_m: int = 0  # IVF: 4-bit fast-scan PQ sub-quantizers, re-ranked in float16 (0: float16 lists)
    k_factor: int = 0  # IVF with PQ: candidates re-ranked a query, as a multiple of k

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k == "kind" or v}


def _pq_m(n: int, dim: int | None, train_size: int) -> int:
    """Fast-scan PQ sub-quantizers (4 dims each) for an IVF index, or 0 for float16 lists."""
    if dim is None or dim % 8 or n < PQ_MIN or train_size < PQ_MIN_TRAIN:
        return 0
    return dim // 4


def choose_params(
    n: int, kind: str = "auto", *, dim: int | None = None, **overrides: int
) -> IndexParams:
    """Parameters for an index of ``n`` vectors of ``dim`` dimensions (see the module
    docstring for the rules; without ``dim`` an IVF index keeps float16 lists)."""
    if kind not in KINDS:
        raise RetrievalError(f"unknown index kind {kind!r}: choose one of {', '.join(KINDS)}")
    if n < 1:
        raise RetrievalError("cannot build an index over 0 vectors")
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX else "ivf"
    allowed = _TUNABLE[kind]
    bad = set(overrides) - set(allowed)
    if bad:
        raise RetrievalError(
            f"unknown index parameter(s) {sorted(bad)} for kind {kind!r}"
            f" (it takes: {', '.join(allowed) or 'none'})"
        )
    o = {k: int(v) for k, v in overrides.items() if v is not None}
    if kind == "flat":
        p = IndexParams(kind="flat")
    elif kind == "ivf":
        nlist = o.get("nlist", int(max(1, min(round(math.sqrt(n)), n // 39))))
        train_size = o.get("train_size", min(n, 40 * nlist))
        pq_m = o.get("pq_m", _pq_m(n, dim, train_size))
        p = IndexParams(
            kind="ivf",
            nlist=nlist,
            nprobe=o.get("nprobe", int(min(nlist, max(8, round(nlist / 64))))),
            train_size=train_size,
            niter=o.get("niter", 10),
            pq_m=pq_m,
            k_factor=o.get("k_factor", K_FACTOR) if pq_m else 0,
        )
    else:
        p = IndexParams(
            kind="hnsw",
            M=o.get("M", 48 if n > 2_000_000 else 32),
            ef_construction=o.get("ef_construction", 80),
            ef_search=o.get("ef_search", 128),
        )
    if p.kind == "ivf":
        if not 1 <= p.nlist <= n:
            raise RetrievalError(f"nlist must be between 1 and the {n} vectors, got {p.nlist}")
        if p.nprobe < 1 or p.niter < 1:
            raise RetrievalError(f"nprobe and niter must be >= 1, got {p.to_dict()}")
        if p.pq_m and (dim is None or p.pq_m < 1 or dim % p.pq_m or p.k_factor < 1):
            raise RetrievalError(
                f"pq_m must divide the {dim} dimensions and k_factor be >= 1, got {p.to_dict()}"
            )
        p = replace(p, nprobe=min(p.nprobe, p.nlist), train_size=max(p.nlist, min(n, p.train_size)))
    if p.kind == "hnsw" and (p.M < 4 or p.ef_search < 1 or p.ef_construction < 1):
        raise RetrievalError(f"HNSW needs M >= 4 and positive ef values, got {p.to_dict()}")
    return p


def normalize(x: np.ndarray, *, where: str = "vectors") -> np.ndarray:
    """Float32, L2-normalised rows (zero rows stay zero); non-finite values are an error.

    One float32 copy and one pass for the norms (``einsum``, no squared temporary): a
    65,536 x 384 float16 block takes a third of the time of ``isfinite`` + ``linalg.norm``.
    """
    x = np.array(x, dtype=np.float32, order="C", copy=True)  # never touch the caller's array
    if x.ndim == 1:
        x = x[None, :]
    sq = np.einsum("ij,ij->i", x, x)
    if not np.isfinite(sq).all():  # NaN/inf rows, or finite values whose squares overflow
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise RetrievalError(f"{where}: row {bad} holds NaN or infinite values")
        sq = np.square(np.linalg.norm(x.astype(np.float64), axis=1))
    norms = np.sqrt(sq, dtype=np.float64).astype(np.float32)
    norms[norms == 0] = 1.0
    x /= norms[:, None]
    return x


ChunkSource = Callable[[], Iterable[np.ndarray]]
"""A callable that yields the vectors, in order, as float32 normalised blocks (re-iterable)."""


def array_chunks(x: np.ndarray, rows: int = 65_536) -> ChunkSource:
    """A chunk source over an in-memory array (normalised block by block, no full copy)."""

    def gen() -> Iterator[np.ndarray]:
        for s in range(0, len(x), rows):
            yield normalize(x[s : s + rows])

    return gen


def _sample_rows(chunks: ChunkSource, n: int, size: int, dim: int, seed: int) -> np.ndarray:
    """Gather ``size`` rows drawn at random (seeded) from the chunk source, in one pass."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    out = np.empty((len(pick), dim), dtype=np.float32)
    start = filled = 0
    for block in chunks():
        stop = start + len(block)
        lo, hi = np.searchsorted(pick, [start, stop])
        if hi > lo:
            out[filled : filled + hi - lo] = block[pick[lo:hi] - start]
            filled += hi - lo
        start = stop
    if filled != len(pick):
        raise RetrievalError(f"vector source gave {start} rows, expected {n}")
    return out


def prefetched(blocks: Iterable[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """Iterate ``blocks`` while a thread reads ahead (up to ``depth`` blocks).

    Reading the store (decompression, normalising) then overlaps faiss' work on the block
    before: building reads 1M x 384 vectors while adding them, instead of after.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for block in blocks:
                if not put(block):
                    return
            put(end)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    t = threading.Thread(target=read, name="cellbag-index-read", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


@dataclass(frozen=True)
class PositionFilter:
    """The index positions a query may return, without a full mask a query: a packed
    little-endian bitmap (None: every position) minus one range ``[lo, hi)`` (a patient's
    cells are contiguous positions), and how many positions that leaves."""

    bits: np.ndarray | None
    count: int
    exclude: tuple[int, int] | None = None

    @classmethod
    def from_mask(cls, allowed: np.ndarray) -> PositionFilter:
        allowed = np.asarray(allowed, dtype=bool)
        return cls(np.packbits(allowed, bitorder="little"), int(allowed.sum()))

    def selector(self, n: int) -> tuple[Any, list[Any]]:
        """The faiss selector, and the objects it points into (keep them alive)."""
        import faiss

        parts: list[Any] = []
        if self.bits is not None:
            parts.append(faiss.IDSelectorBitmap(n, faiss.swig_ptr(self.bits)))
        if self.exclude is not None:
            inner = faiss.IDSelectorRange(int(self.exclude[0]), int(self.exclude[1]))
            parts += [inner, faiss.IDSelectorNot(inner)]
        if self.bits is not None and self.exclude is not None:
            parts.append(faiss.IDSelectorAnd(parts[0], parts[-1]))
        return (parts[-1] if parts else None), [self.bits, *parts]


def _ivf_pq_refined(quantizer: Any, dim: int, params: IndexParams, sample: np.ndarray) -> Any:
    """IVF lists of 4-bit fast-scan PQ codes (residuals), each query's ``k_factor * k`` best
    candidates re-ranked exactly on a float16 copy of the vectors (which also serves
    ``reconstruct``). ``quantizer`` holds the trained centroids and is taken over."""
    import faiss

    base = faiss.IndexIVFPQFastScan(
        quantizer, dim, params.nlist, params.pq_m, 4, faiss.METRIC_INNER_PRODUCT
    )
    base.own_fields = True
    quantizer.this.disown()
    with _one_thread():  # 96 tiny k-means: OpenMP barriers cost more than they share
        base.train(sample)  # the PQ only: the quantizer is already trained and filled
    base.nprobe = params.nprobe
    exact = faiss.IndexScalarQuantizer(
        dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    index = faiss.IndexRefine(base, exact)
    index.own_fields = True
    base.this.disown()
    exact.this.disown()
    index.k_factor = params.k_factor
    return index


@dataclass
class CellIndex:
    """A faiss index plus the store row of each of its vectors and how it was built."""

    index: Any
    rows: np.ndarray
    params: IndexParams
    dim: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return self.params.kind

    def __repr__(self) -> str:  # not the dataclass default: it would print every row number
        return f"CellIndex({self.kind}, {self.n:,} cells, dim {self.dim})"

    # ----------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        chunks: ChunkSource,
        n: int,
        dim: int,
        *,
        rows: np.ndarray | None = None,
        kind: str = "auto",
        seed: int = 0,
        threads: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        sampler: Callable[[int, int], np.ndarray] | None = None,
        **overrides: int,
    ) -> CellIndex:
        """Build an index from ``n`` normalised vectors of ``dim`` given block by block.

        ``rows`` maps index positions to store rows (default ``arange(n)``);
        ``progress(stage, done, total)`` is called as blocks are added;
        ``sampler(size, seed)`` returns ``size`` normalised training vectors for IVF (default:
        a seeded random draw in one pass over ``chunks``).
        """
        import faiss

        set_threads(threads)
        params = choose_params(n, kind, dim=dim, **overrides)
        t0 = time.perf_counter()
        if params.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif params.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, params.M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params.ef_construction
            index.hnsw.efSearch = params.ef_search
        else:
            if progress:
                progress("train", 0, params.train_size)
            if sampler is not None:
                sample = np.ascontiguousarray(sampler(params.train_size, seed), np.float32)
            else:
                sample = _sample_rows(chunks, n, params.train_size, dim, seed)
            km = faiss.Clustering(dim, params.nlist)
            km.niter = params.niter
            km.seed = seed
            km.spherical = True
            km.max_points_per_centroid = 1 << 30  # the sample is already drawn
            km.min_points_per_centroid = 1
            km.verbose = False
            km.train(sample, faiss.IndexFlatIP(dim))
            centroids = faiss.vector_to_array(km.centroids).reshape(params.nlist, dim)
            quantizer = faiss.IndexFlatIP(dim)
            quantizer.add(centroids)
            if params.pq_m:
                index = _ivf_pq_refined(quantizer, dim, params, sample)
            else:
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer,
                    dim,
                    params.nlist,
                    faiss.ScalarQuantizer.QT_fp16,
                    faiss.METRIC_INNER_PRODUCT,
                    False,  # encode the vectors themselves, not residuals
                )
                index.own_fields = True
                quantizer.this.disown()
                index.is_trained = True
                index.nprobe = params.nprobe
            del sample
            if progress:
                progress("train", params.train_size, params.train_size)
        added = 0
        for block in prefetched(chunks()):
            if block.shape[1] != dim:
                raise RetrievalError(f"vector block has dim {block.shape[1]}, expected {dim}")
            index.add(block)
            added += len(block)
            if progress:
                progress("add", added, n)
        if added != n:
            raise RetrievalError(f"vector source gave {added} rows, expected {n}")
        if params.kind == "ivf" and not params.pq_m:
            index.make_direct_map()  # position -> vector, for queries by cell (8 bytes/vector)
        rows_arr = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        if len(rows_arr) != n:
            raise RetrievalError(f"{len(rows_arr)} row ids for {n} vectors")
        if n > 1 and not (np.diff(rows_arr) > 0).all():
            raise RetrievalError("row ids of an index must be strictly increasing")
        meta = {"build_seconds": round(time.perf_counter() - t0, 3), "seed": seed}
        return cls(index=index, rows=rows_arr, params=params, dim=dim, meta=meta)

    # --------------------------------------------------------------- searching
    def _search_params(self, sel: Any, widen: int = 1) -> Any:
        if sel is None:  # the same for every unfiltered query: made once (~0.1 ms each)
            cache = self.__dict__.setdefault("_params_cache", {})
            if widen not in cache:
                cache[widen] = self._make_search_params(None, widen)
            return cache[widen]
        return self._make_search_params(sel, widen)

    def _make_search_params(self, sel: Any, widen: int) -> Any:
        import faiss

        if self.kind == "ivf":
            nprobe = min(self.params.nlist, self.params.nprobe * widen)
            ivf = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
            if not self.params.pq_m:
                return ivf
            return faiss.IndexRefineSearchParameters(  # keeps ``ivf`` alive
                k_factor=self.params.k_factor, base_index_params=ivf
            )
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=sel, efSearch=self.params.ef_search * widen)
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | PositionFilter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, positions) for each query; positions are -1 when missing.

        ``allowed`` is a boolean mask over index positions or a :class:`PositionFilter` (a
        filter applied inside faiss; the filter is cheaper: no mask a query).
        Approximate kinds that find fewer than ``min(k, allowed)`` hits under a filter are
        retried with a wider search (more lists / a larger beam), up to exhaustive IVF.
        """
        q = normalize(queries, where="query")
        if q.shape[1] != self.dim:
            raise RetrievalError(f"query has dim {q.shape[1]}, the index holds dim {self.dim}")
        k = int(min(k, self.n))
        if k < 1:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        sel, alive, want = None, [], k
        if allowed is not None:
            if not isinstance(allowed, PositionFilter):
                if len(allowed) != self.n:
                    raise RetrievalError(
                        f"filter mask has {len(allowed)} entries, index has {self.n}"
                    )
                allowed = PositionFilter.from_mask(allowed)
            sel, alive = allowed.selector(self.n)
            want = int(min(k, allowed.count))
        one = _one_thread() if len(q) == 1 else contextlib.nullcontext()
        with one:
            sims, pos = self._search_widening(q, k, sel, want)
        del alive  # kept alive until here: the selector points into them
        return sims, pos.astype(np.int64)

    def _search_widening(self, q: np.ndarray, k: int, sel: Any, want: int) -> tuple:
        widen = 1
        while True:
            sp = self._search_params(sel, widen)
            sims, pos = self.index.search(q, k, params=sp) if sp else self.index.search(q, k)
            found = (pos >= 0).sum(axis=1).min()
            if found >= want or self.kind == "flat" or widen >= 64:
                break
            if self.kind == "ivf" and self.params.nprobe * widen >= self.params.nlist:
                break
            widen *= 4
        return sims, pos

    def vector(self, row: int) -> np.ndarray | None:
        """The indexed (normalised) vector of store row ``row`` as ``(1, dim)``, or None."""
        pos = int(np.searchsorted(self.rows, row))
        if pos >= len(self.rows) or self.rows[pos] != row:
            return None
        try:
            return self.index.reconstruct(pos).reshape(1, -1)
        except RuntimeError:  # an IVF index without a direct map
            return None

    # --------------------------------------------------------------- persisting
    @property
    def nbytes(self) -> int:
        """Memory the index holds (vectors, list ids, graph links, centroids) plus its row map."""
        vectors = self.n * self.dim * 4
        if self.kind == "ivf":
            vectors //= 2  # float16 codes (IVF lists, or the re-ranking copy beside PQ)
            extra = self.params.nlist * self.dim * 4  # centroids
            # PQ: 4-bit codes and ids in the lists; float16 lists: ids and the direct map
            extra += self.n * (self.params.pq_m // 2 + 8) if self.params.pq_m else self.n * 16
        elif self.kind == "hnsw":  # level-0 links (2M), upper levels (~M/(M-1) of M), offsets
            extra = int(self.n * (2 * self.params.M * 4 * 1.05 + 8 + 4))
        else:
            extra = 0
        return int(vectors + extra + self.rows.nbytes)

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``index.faiss``, ``rows.npy`` and ``index.json`` atomically into ``directory``."""
        import faiss

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            np.save(tmp / ROWS_FILE, self.rows)
            info = {
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "params": self.params.to_dict(),
                "n": self.n,
                "dim": self.dim,
                "metric": "cosine (inner product of L2-normalised float32)",
                "faiss_version": faiss.__version__,
                "rows_file": ROWS_FILE,
                **self.meta,
                **(extra or {}),
            }
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
            if directory.exists():
                directory.rename(old)
            tmp.rename(directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not directory.exists():
                old.rename(directory)
            raise
        shutil.rmtree(old, ignore_errors=True)
        self.meta.update(extra or {})
        return directory

    @staticmethod
    def read_info(directory: str | Path) -> dict[str, Any] | None:
        """The saved ``index.json`` of ``directory``, or None when there is no index there."""
        path = Path(directory) / INFO_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RetrievalError(f"{path}: unreadable index metadata ({e})") from e

    @classmethod
    def load(cls, directory: str | Path, threads: int | None = None) -> CellIndex:
        """Read an index written by :meth:`save`."""
        import faiss

        directory = Path(directory)
        info = cls.read_info(directory)
        if info is None:
            raise RetrievalError(f"{directory}: no index here (run `cellbag index`)")
        if info.get("format_version") != FORMAT_VERSION:
            raise RetrievalError(f"{directory}: index format {info.get('format_version')} unknown")
        set_threads(threads)
        try:
            index = faiss.read_index(str(directory / INDEX_FILE))
            rows = np.load(directory / ROWS_FILE)
        except (OSError, RuntimeError, ValueError) as e:
            raise RetrievalError(f"{directory}: cannot read the index ({e})") from e
        params = IndexParams(**info["params"])
        if params.kind == "hnsw":
            index.hnsw.efSearch = params.ef_search
        elif params.kind == "ivf":
            faiss.extract_index_ivf(index).nprobe = params.nprobe
        if len(rows) != index.ntotal:
            raise RetrievalError(f"{directory}: {len(rows)} row ids for {index.ntotal} vectors")
        known = {"format_version", "kind", "params", "n", "dim", "metric", "rows_file"}
        meta = {k: v for k, v in info.items() if k not in known}
        return cls(index=index, rows=rows, params=params, dim=int(info["dim"]), meta=meta)
