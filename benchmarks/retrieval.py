"""Retrieval benchmark: build time, query latency, recall@10 and memory of the cell index.

Writes ``--n`` synthetic clustered ``--dim``-d embeddings (default 1,000,000 x 384) into a
real feature store (a fake cohort: ~80 cells a patient, paths that do not exist), builds
the ``auto`` index with :func:`cellbag.retrieval.build_index` (IVF with 4-bit fast-scan PQ
codes re-ranked in float16 above 50k cells), then measures single k=10 queries (p50/p95),
batched queries, recall@10 against exact search on 1,000 held-out queries, and the index's
memory. Beside it, in the same run: the IVF with float16 lists the index used before
(``pq_m=0``; ``--no-compare`` skips it) and the exact (flat) index over the first 100k
vectors.

Then what a single query costs and why: OpenMP threads for one query (1 vs 2), the query's
float16 -> float32 conversion and normalisation, nprobe (recall and latency at 8, 16, 32),
and ``Retriever.query`` end to end with each filter (none, ``--split train``,
``--other-patients``, both), beside what building a full mask a query cost before.

Targets on 2 CPU cores: p50 <= 1 ms, p95 <= 3 ms, recall@10 >= 0.95, build <= 60 s, index
memory <= 1 GiB. The load average is printed before and after: on a shared machine single
query latencies (p95 above all) measure the scheduler as much as the index.

The data: 64 coarse groups ("cell types") of 32 sub-clusters each (2,048 in all, sizes
varying 4x); a point is its sub-cluster centre plus a random offset in a 16-d subspace of
that sub-cluster (relative norm ~1.5) plus small isotropic noise, L2-normalised. Sub-
clusters of a group overlap, so nearest neighbours are not trivially one IVF list.

    python benchmarks/retrieval.py                 # the full run (~1.5 GB of vectors)
    python benchmarks/retrieval.py --n 200000      # smaller
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TARGET_P50_MS, TARGET_P95_MS, TARGET_RECALL, TARGET_BUILD_S = 1.0, 3.0, 0.95, 60.0
TARGET_MEMORY_MIB = 1024.0


class Clustered:
    """Seeded generator of clustered, unit-norm vectors (see the module docstring)."""

    def __init__(self, dim: int = 384, seed: int = 0, groups: int = 64, sub: int = 32,
                 rank: int = 16, sub_norm: float = 0.5, spread: float = 1.5) -> None:  # fmt: skip
        rng = np.random.default_rng(seed)
        coarse = rng.standard_normal((groups, dim))
        coarse /= np.linalg.norm(coarse, axis=1, keepdims=True)
        off = rng.standard_normal((groups * sub, dim))
        off *= sub_norm / np.linalg.norm(off, axis=1, keepdims=True)
        self.centers = (np.repeat(coarse, sub, axis=0) + off).astype(np.float32)
        c = len(self.centers)
        scale = rng.uniform(0.5, 1.5, c) * spread / np.sqrt(rank)
        self.bases = (
            rng.standard_normal((c, rank, dim)) / np.sqrt(dim) * scale[:, None, None]
        ).astype(np.float32)
        w = rng.uniform(0.5, 2.0, c)
        self.weights = w / w.sum()
        self.dim, self.rank = dim, rank

    def sample(self, m: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = rng.choice(len(self.centers), m, p=self.weights)
        x = rng.standard_normal((m, self.dim), dtype=np.float32) * np.float32(
            0.1 / np.sqrt(self.dim)
        )
        x += self.centers[c]
        z = rng.standard_normal((m, self.rank), dtype=np.float32)
        order = np.argsort(c, kind="stable")
        for grp in np.split(order, np.flatnonzero(np.diff(c[order])) + 1):
            x[grp] += z[grp] @ self.bases[c[grp[0]]]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def fake_cohort(n: int, root: Path, cells_per_patient: int = 80):
    """A Cohort of ``n`` cells with fake paths (the store never reads images here)."""
    from cellbag.data import Cohort

    n_pat = max(1, n // cells_per_patient)
    pid_of = np.minimum(np.arange(n) // cells_per_patient, n_pat - 1)
    pids = np.array([f"P{i:06d}" for i in range(n_pat)], dtype=object)
    rng = np.random.default_rng(0)
    patients = pd.DataFrame(
        {
            "patient_id": pids,
            "split": np.where(np.arange(n_pat) % 5 == 4, "test", "train"),
            "label": pd.array(rng.integers(0, 2, n_pat), dtype="Int64"),
            "gender": rng.choice(["M", "F"], n_pat),
            "dob": pd.to_datetime("1960-01-01")
            + pd.to_timedelta(rng.integers(0, 15000, n_pat), "D"),
            "lymph_count": rng.uniform(2, 100, n_pat),
        }
    )
    within = np.arange(n) - pid_of * cells_per_patient
    cell_pid = pids[pid_of]
    names = np.char.add(
        np.char.add(cell_pid.astype(str), "/"), np.char.zfill(within.astype(str), 6)
    )
    cell_ids = np.char.add(names, ".jpg")
    cells = pd.DataFrame(
        {
            "cell_id": cell_ids.astype(object),
            "patient_id": cell_pid,
            "path": np.char.add(f"{root}/images/", cell_ids).astype(object),
        }
    )
    return Cohort(root=root, layout="manifest", patients=patients, cells=cells)


def percentiles(lat_s: list[float]) -> tuple[float, float]:
    a = np.asarray(lat_s) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def single_latency(index, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    index.search(queries[:5], k)  # warm up
    lat = []
    for i in range(len(queries)):
        t = time.perf_counter()
        index.search(queries[i : i + 1], k)
        lat.append(time.perf_counter() - t)
    return percentiles(lat)


def batched(index, queries: np.ndarray, k: int = 10, batch: int = 100) -> float:
    """Milliseconds a query when searched in batches of ``batch``."""
    t = time.perf_counter()
    for s in range(0, len(queries), batch):
        index.search(queries[s : s + batch], k)
    return (time.perf_counter() - t) * 1e3 / len(queries)


def exact_topk(chunks, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k index positions by streaming over the indexed vectors (no extra copy)."""
    import faiss

    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    start = 0
    for block in chunks():
        s, i = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, i + start], axis=1)
        top = np.argsort(-s_all, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(s_all, top, 1)
        best_i = np.take_along_axis(i_all, top, 1)
        start += len(block)
    return best_i


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="cells in the store (default 1M)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries")
    ap.add_argument("--kind", default="auto", help="index kind: auto, flat, ivf, hnsw")
    ap.add_argument("--exact-n", type=int, default=100_000, help="size of the exact comparison")
    ap.add_argument("--threads", type=int, default=2, help="faiss threads (build and batches)")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the store goes (default: a temp dir, removed); a store left there by an "
        "earlier run of the same --n and --dim is reused",
    )
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument(
        "--no-compare", action="store_true", help="skip the float16-lists IVF (the one before)"
    )
    args = ap.parse_args(argv)

    import faiss

    from cellbag import retrieval
    from cellbag.retrieval.faiss_index import CellIndex, array_chunks
    from cellbag.retrieval.store_index import _row_chunks, ok_cells
    from cellbag.store import Store

    retrieval.set_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cellbag-retrieval-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    store_path = work / "bench.zarr"
    n, dim = args.n, args.dim
    print(f"cellbag retrieval benchmark: {n:,} x {dim}-d, faiss {faiss.__version__}, "
          f"{args.threads} thread(s) (machine has {os.cpu_count()} cpus); {_load()}", flush=True)  # fmt: skip

    gen = Clustered(dim=dim)
    queries = gen.sample(args.queries, seed=7)  # held out: not in the store
    encoder_id = f"synthetic-{dim}d"
    if not _reusable(store_path, n, encoder_id):
        shutil.rmtree(store_path, ignore_errors=True)
        t = time.perf_counter()
        data = np.empty((n, dim), np.float16)  # the store keeps float16: no float32 copy
        for i, s in enumerate(range(0, n, 100_000)):
            data[s : s + 100_000] = gen.sample(min(100_000, n - s), seed=1000 + i)
        print(f"generated vectors in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        cohort = fake_cohort(n, work)
        store = Store.create(store_path, cohort)
        del cohort
        store.add_embeddings(encoder_id, data, {"name": encoder_id, "note": "benchmark"})
        del data
        gc.collect()
        print(f"wrote the store in {time.perf_counter() - t:.1f} s ({store_path})", flush=True)
    else:
        print(f"reusing the store {store_path}", flush=True)
    store = Store.open(store_path)
    rows = ok_cells(store)["row"].to_numpy(np.int64)
    chunks = _row_chunks(store, encoder_id, rows)
    t = time.perf_counter()
    for _ in chunks():
        pass
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    truth = exact_topk(chunks, queries, 10)
    print(
        f"read pass {read_s:.1f} s; exact ground truth in {time.perf_counter() - t:.1f} s",
        flush=True,
    )

    t = time.perf_counter()
    index = retrieval.build_index(store, encoder_id, args.kind, threads=args.threads)
    build_s = time.perf_counter() - t
    where = retrieval.index_dir(store, encoder_id)
    disk = sum(f.stat().st_size for f in where.iterdir())
    print(f"built {index.kind} {index.params.to_dict()} in {build_s:.1f} s "
          f"(incl. reading the store); saved {disk / 2**20:.0f} MiB", flush=True)  # fmt: skip

    _, found = index.search(queries, 10)
    recall = recall_at(found, truth)
    p50, p95 = single_latency(index, queries)  # one query at a time runs on one thread
    batch_ms = batched(index, queries)
    batch_all_ms = batched(index, queries, batch=len(queries))

    # what a user sees: a loaded Retriever answering neighbors() by cell id (a DataFrame)
    t = time.perf_counter()
    retriever = retrieval.Retriever(store, encoder_id, threads=1)
    load_s = time.perf_counter() - t
    cell_ids = store.cells()["cell_id"].iloc[:: max(1, n // 200)].tolist()[:200]
    lat = []
    for cid in cell_ids:
        t = time.perf_counter()
        retriever.query(cell_id=cid, k=10)
        lat.append(time.perf_counter() - t)
    api_p50, api_p95 = percentiles(lat)
    lat = []
    for cid in cell_ids[:100]:
        t = time.perf_counter()
        retriever.query(cell_id=cid, k=10, other_patients=True, split="train")
        lat.append(time.perf_counter() - t)
    api_f50, api_f95 = percentiles(lat)
    del retriever

    costs = single_query_costs(index, queries, truth, store, encoder_id)

    main_row = {
        "index": f"{index.kind} {_codec(index)} {n:,}",
        "build s": build_s,
        "p50 ms": p50,
        "p95 ms": p95,
        f"batch100 ms/q ({args.threads} thr)": batch_ms,
        f"batch1000 ms/q ({args.threads} thr)": batch_all_ms,
        "recall@10": recall,
        "memory MiB": index.nbytes / 2**20,
    }
    del index
    gc.collect()
    rows_out = [main_row]
    if not args.no_compare and main_row["index"].startswith("ivf pq"):
        t = time.perf_counter()
        old = retrieval.build_index(
            store, encoder_id, "ivf", threads=args.threads, save=False, pq_m=0
        )
        old_build = time.perf_counter() - t
        _, found = old.search(queries, 10)
        o50, o95 = single_latency(old, queries)
        rows_out.append(
            {
                "index": f"ivf {_codec(old)} {n:,} (before)",
                "build s": old_build,
                "p50 ms": o50,
                "p95 ms": o95,
                f"batch100 ms/q ({args.threads} thr)": batched(old, queries),
                f"batch1000 ms/q ({args.threads} thr)": batched(old, queries, batch=len(queries)),
                "recall@10": recall_at(found, truth),
                "memory MiB": old.nbytes / 2**20,
            }
        )
        del old
        gc.collect()

    # the exact index over the first exact_n vectors, for comparison
    m = min(args.exact_n, n)
    sub = np.concatenate([b for b in _first_rows(chunks, m)])
    t = time.perf_counter()
    flat = CellIndex.build(array_chunks(sub), m, dim, kind="flat", threads=args.threads)
    flat_build = time.perf_counter() - t
    f50, f95 = single_latency(flat, queries)
    exact_row = {
        "index": f"flat {m:,}",
        "build s": flat_build,
        "p50 ms": f50,
        "p95 ms": f95,
        f"batch100 ms/q ({args.threads} thr)": batched(flat, queries),
        f"batch1000 ms/q ({args.threads} thr)": batched(flat, queries, batch=len(queries)),
        "recall@10": 1.0,
        "memory MiB": flat.nbytes / 2**20,
    }
    table = pd.DataFrame([*rows_out, exact_row]).set_index("index")
    print()
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.to_string())
    print(f"\nRetriever: loaded in {load_s:.1f} s; neighbors(cell_id, k=10) end to end "
          f"p50 {api_p50:.2f} ms / p95 {api_p95:.2f} ms; with --other-patients --split train "
          f"p50 {api_f50:.2f} ms / p95 {api_f95:.2f} ms")  # fmt: skip
    print(f"store read pass {read_s:.1f} s; peak RSS {rss_gb():.2f} GiB; {_load()}")
    print("\nwhat one query costs (p50 / p95 ms, k=10):")
    for name, value in costs.items():
        print(f"  {name:<58} {value}")
    mem = main_row["memory MiB"]
    checks = [
        ("p50 single-query latency", f"{p50:.2f} ms", p50 <= TARGET_P50_MS, f"<= {TARGET_P50_MS} ms"),
        ("p95 single-query latency", f"{p95:.2f} ms", p95 <= TARGET_P95_MS, f"<= {TARGET_P95_MS} ms"),
        ("recall@10", f"{recall:.4f}", recall >= TARGET_RECALL, f">= {TARGET_RECALL}"),
        ("build time", f"{build_s:.1f} s", build_s <= TARGET_BUILD_S, f"<= {TARGET_BUILD_S:.0f} s"),
        ("index memory", f"{mem:.0f} MiB", mem <= TARGET_MEMORY_MIB, f"<= {TARGET_MEMORY_MIB:.0f} MiB"),
    ]  # fmt: skip
    print()
    for name, value, ok, target in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {value} (target {target})")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _codec(index) -> str:
    """How an index stores its vectors: pq (re-ranked in float16), fp16, fp32 or graph."""
    if index.kind == "ivf":
        return f"pq{index.params.pq_m}x4fs+fp16" if index.params.pq_m else "fp16"
    return "fp32"


def _timed(f, reps: int = 300, warm: int = 5) -> str:
    for i in range(warm):
        f(i)
    lat = []
    for i in range(reps):
        t = time.perf_counter()
        f(i)
        lat.append(time.perf_counter() - t)
    p50, p95 = percentiles(lat)
    return f"{p50:.3f} / {p95:.3f}"


def single_query_costs(index, queries: np.ndarray, truth, store, encoder_id: str) -> dict:
    """Where a single query's time goes: threads, conversion, nprobe, filters (see the
    module docstring). Returns {what: "p50 / p95"}."""
    from dataclasses import replace

    import faiss

    from cellbag import retrieval
    from cellbag.retrieval.faiss_index import CellIndex, normalize

    out = {}
    nq = len(queries)
    q32 = normalize(queries)
    sp = index._search_params(None)
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        out[f"faiss search, {threads} OpenMP thread(s) for one query"] = _timed(
            lambda i: index.index.search(q32[i % nq : i % nq + 1], 10, params=sp)
        )
    faiss.omp_set_num_threads(1)
    q16 = queries.astype(np.float16)
    out["query float16 -> float32 + normalise (1 x dim)"] = _timed(
        lambda i: normalize(q16[i % nq : i % nq + 1]), reps=2000
    )
    out["query vector of a cell (reconstruct)"] = _timed(
        lambda i: index.vector(int(index.rows[(i * 7919) % index.n])), reps=2000
    )
    out["CellIndex.search (normalise + search)"] = _timed(
        lambda i: index.search(queries[i % nq : i % nq + 1], 10)
    )
    if index.kind == "ivf":
        for nprobe in sorted({8, 16, 32, index.params.nprobe}):
            probe = CellIndex(
                index.index, index.rows, replace(index.params, nprobe=nprobe), index.dim
            )
            _, found = probe.search(queries, 10)
            lat = _timed(lambda i, p=probe: p.search(queries[i % nq : i % nq + 1], 10))
            out[f"nprobe {nprobe}: recall@10 {recall_at(found, truth):.4f}, latency"] = lat
    retriever = retrieval.Retriever(store, encoder_id, threads=1)
    cells = store.cells()["cell_id"]
    picks = cells.iloc[:: max(1, len(cells) // 200)].tolist()[:200]
    for name, kw in [
        ("none", {}),
        ("--split train", {"split": "train"}),
        ("--other-patients", {"other_patients": True}),
        ("--other-patients --split train", {"other_patients": True, "split": "train"}),
    ]:
        out[f"Retriever.query by cell id, filter {name}"] = _timed(
            lambda i, kw=kw: retriever.query(cell_id=picks[i % len(picks)], k=10, **kw),
            reps=200,
        )
    codes, pcodes = retriever._split_code, retriever._patient_code

    def mask(i: int) -> None:  # what each filtered query built before: a mask over n
        allowed = np.ones(len(codes), dtype=bool)
        allowed &= codes == 0
        allowed &= pcodes != i % 100
        int(allowed.sum())
        np.packbits(allowed, bitorder="little")

    out["(before) a full mask a filtered query: build + count + pack"] = _timed(mask, reps=200)
    return out


def _load() -> str:
    """The 1/5/15-minute load averages (how busy the shared machine was)."""
    try:
        return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not Unix
        return "load average n/a"


def _reusable(path: Path, n: int, encoder_id: str) -> bool:
    """A store of an earlier run with ``--workdir`` (same size and data) can be reused."""
    from cellbag.store import Store, StoreError

    if not path.exists():
        return False
    try:
        store = Store.open(path)
        return store.n_cells == n and store.is_complete(encoder_id)
    except StoreError:
        return False


def _first_rows(chunks, m: int):
    got = 0
    for block in chunks():
        take = block[: m - got]
        got += len(take)
        yield take
        if got >= m:
            return


if __name__ == "__main__":
    sys.exit(main())
