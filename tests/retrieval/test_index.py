"""The faiss index on plain arrays: parameter rules, exactness, recall, filters, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cellbag.retrieval import EXACT_MAX, CellIndex, RetrievalError, choose_params
from cellbag.retrieval.faiss_index import array_chunks, normalize, prefetched


def clustered(n: int, dim: int = 24, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(
        np.float32
    )
    return x.astype(np.float32)


def build(x: np.ndarray, kind: str, **kw) -> CellIndex:
    return CellIndex.build(
        array_chunks(x, rows=700), len(x), x.shape[1], kind=kind, threads=1, **kw
    )


@pytest.fixture(scope="module")
def data():
    x = clustered(4000)
    q = clustered(60, seed=1)
    exact = build(x, "flat")
    _, truth = exact.search(q, 10)
    return x, q, exact, truth


def test_auto_is_exact_below_threshold_and_ivf_above():
    assert choose_params(EXACT_MAX).kind == "flat"
    p = choose_params(1_000_000)
    assert p.kind == "ivf"
    assert p.nlist == round(math.sqrt(1_000_000)) == 1000
    assert p.nprobe == 16 and p.train_size == 40_000
    assert choose_params(EXACT_MAX + 1).nprobe == 8  # never fewer than 8 lists
    assert p.train_size <= 1_000_000
    h = choose_params(10, "hnsw")
    assert h.M > 0 and h.ef_search >= 64
    # small IVF stays trainable: at least 39 points a list
    assert choose_params(500, "ivf").nlist <= 500 // 39


def test_bad_kind_and_parameter_are_clear_errors():
    with pytest.raises(RetrievalError, match="unknown index kind 'annoy'"):
        choose_params(10, "annoy")
    with pytest.raises(RetrievalError, match="unknown index parameter"):
        choose_params(10, "flat", nprobe=3)
    with pytest.raises(RetrievalError, match="0 vectors"):
        choose_params(0)
    with pytest.raises(RetrievalError, match="nlist must be between 1 and the 10 vectors"):
        choose_params(10, "ivf", nlist=11)
    assert choose_params(100, "ivf", nlist=2, nprobe=5).nprobe == 2  # clipped to nlist
    assert choose_params(10_000, "ivf", nlist=640).nprobe == 10  # rules follow an override
    with pytest.raises(RetrievalError, match="for kind 'hnsw' .*takes: M"):
        choose_params(10, "hnsw", nlist=4)


def test_flat_nearest_of_each_vector_is_itself(data):
    x, _, exact, _ = data
    sims, pos = exact.search(x[:50], 1)
    assert (pos[:, 0] == np.arange(50)).all()
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_the_exact_neighbours(data, kind):
    x, q, _, truth = data
    index = build(x, kind)
    assert index.kind == kind and index.n == len(x)
    _, found = index.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
    assert recall >= 0.9, recall


def test_filter_mask_is_respected_and_ivf_widens_to_fill_k(data):
    x, q, _, _ = data
    allowed = np.zeros(len(x), bool)
    allowed[::97] = True  # 42 allowed vectors, scattered over the lists
    index = build(x, "ivf", nprobe=1)
    _, pos = index.search(q[:5], 10, allowed)
    assert (pos >= 0).all(), "widened search must still find k allowed vectors"
    assert allowed[pos].all()
    flat = build(x, "flat")
    _, exact = flat.search(q[:5], 10, allowed)
    assert allowed[exact].all()


def test_k_larger_than_index_returns_what_exists():
    x = clustered(7)
    sims, pos = build(x, "flat").search(x[:1], 50)
    assert pos.shape == (1, 7) and sorted(pos[0]) == list(range(7))


def test_save_load_roundtrip(tmp_path, data):
    x, q, _, _ = data
    index = build(x, "ivf", seed=3)
    out = index.save(tmp_path / "idx", extra={"embeddings_digest": "abc"})
    again = CellIndex.load(out, threads=1)
    assert again.kind == "ivf" and again.params == index.params and again.n == index.n
    assert again.meta["embeddings_digest"] == "abc" and again.meta["seed"] == 3
    np.testing.assert_array_equal(again.rows, index.rows)
    np.testing.assert_array_equal(again.search(q, 5)[1], index.search(q, 5)[1])
    # overwriting keeps a complete index in place, no temp folders left behind
    build(x[:100], "flat").save(out)
    assert CellIndex.load(out).n == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_ivf_build_is_deterministic(data):
    x, q, _, _ = data
    a, b = build(x, "ivf", seed=1), build(x, "ivf", seed=1)
    np.testing.assert_array_equal(a.search(q, 10)[1], b.search(q, 10)[1])


def test_inputs_are_not_modified(data):
    x, q, exact, _ = data
    before = q.copy()
    exact.search(q, 3)
    np.testing.assert_array_equal(q, before)
    ro = np.ones((3, 4), np.float32)
    ro.setflags(write=False)
    np.testing.assert_allclose(np.linalg.norm(normalize(ro), axis=1), 1.0, rtol=1e-6)


def test_nan_vectors_and_wrong_dim_are_errors():
    x = clustered(10)
    x[3, 2] = np.nan
    with pytest.raises(RetrievalError, match="row 3 holds NaN"):
        normalize(x, where="test vectors")
    index = build(clustered(10), "flat")
    with pytest.raises(RetrievalError, match="dim 5"):
        index.search(np.ones((1, 5), np.float32), 3)


def test_load_missing_index_names_the_folder(tmp_path):
    with pytest.raises(RetrievalError, match=f"{tmp_path}.*cellbag index"):
        CellIndex.load(tmp_path)


def test_normalize_handles_large_finite_values_and_zero_rows():
    x = np.array([[3e30, 4e30], [0.0, 0.0], [3.0, 4.0]], np.float32)
    np.testing.assert_allclose(normalize(x), [[0.6, 0.8], [0.0, 0.0], [0.6, 0.8]], rtol=1e-6)
    x[1, 1] = np.inf
    with pytest.raises(RetrievalError, match="row 1 holds NaN"):
        normalize(x)


def test_prefetched_keeps_order_and_raises_the_readers_error():
    blocks = [np.full((2, 3), i, np.float32) for i in range(7)]
    got = list(prefetched(iter(blocks)))
    assert [int(b[0, 0]) for b in got] == list(range(7))

    def failing():
        yield blocks[0]
        raise RetrievalError("store row offset 65536: row 3 holds NaN")

    with pytest.raises(RetrievalError, match="row 3 holds NaN"):
        list(prefetched(failing()))
    first = prefetched(iter(blocks), depth=1)  # abandoned early: the reader stops
    assert int(next(first)[0, 0]) == 0
    first.close()


def test_ivf_with_pq_codes_reranked_in_float16(data, tmp_path):
    """Large IVF indexes scan 4-bit PQ codes and re-rank the best in float16."""
    x, q, _, truth = data
    assert choose_params(1_000_000, dim=384).pq_m == 96  # 4 dimensions a sub-quantizer
    assert choose_params(1_000_000, dim=384).k_factor == 16
    assert choose_params(1_000_000).pq_m == 0  # no dim: float16 lists
    assert choose_params(1_000_000, dim=12).pq_m == 0  # not a multiple of 8
    assert choose_params(30_000, "ivf", dim=384, train_size=500).pq_m == 0  # too few to train
    # 24-d noisy clusters are hard for 6 sub-quantizers: re-rank more candidates here
    index = build(x, "ivf", pq_m=6, k_factor=64)
    assert index.params.pq_m == 6 and index.params.k_factor == 64
    sims, found = index.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
    assert recall >= 0.9, recall
    true_sims = np.einsum("qd,qkd->qk", normalize(q), normalize(x)[found])
    np.testing.assert_allclose(sims, true_sims, atol=2e-3)  # re-ranked in float16, not PQ
    v = index.vector(7)
    np.testing.assert_allclose(v[0], normalize(x[7:8])[0], atol=1e-3)
    allowed = np.zeros(len(x), bool)
    allowed[::97] = True
    _, pos = build(x, "ivf", pq_m=6, k_factor=64, nprobe=1).search(q[:5], 10, allowed)
    assert (pos >= 0).all() and allowed[pos].all()
    again = CellIndex.load(index.save(tmp_path / "pq"), threads=1)
    assert again.params == index.params
    np.testing.assert_array_equal(again.search(q, 10)[1], found)
    np.testing.assert_array_equal(build(x, "ivf", pq_m=6, k_factor=64).search(q, 10)[1], found)
