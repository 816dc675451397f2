"""lib.knn and its engines against a naive float64 oracle: ties by index, self-exclusion, duplicates, blocks."""

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import lib.knn as knn_module
import lib.knn_cpu as knn_cpu
import lib.knn_ties as knn_ties
from lib.errors import ConfigError
from lib.knn import knn_search
from lib.knn_keys import make_keys
from tests.devices import on_cuda, skip_without_faiss_gpu

ENGINES = [
    ("auto", "cpu"),
    ("faiss-flat", "cpu"),
    ("torch+sklearn", "cpu"),
    on_cuda("auto", "cuda", name="auto-cuda"),
    on_cuda("faiss-gpu", "cuda", name="faiss-gpu"),
]


def search(queries, gallery, k, *, backend: str, device: str, **options):
    """knn_search with one of ENGINES; faiss-gpu cases skip where faiss has no GPU build."""
    if backend == "faiss-gpu":
        skip_without_faiss_gpu()
    return knn_search(queries, gallery, k, backend=backend, device=device, **options)


def oracle(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """Sort every gallery item by (exact distance, index); drop the query itself, or the (k+1)-th."""
    q, g = queries.astype(np.float64), gallery.astype(np.float64)
    result = []
    for i, query in enumerate(q):
        distances = ((g - query) ** 2).sum(1)
        order = sorted(range(len(g)), key=lambda j: (distances[j], j))[: k + exclude_self]
        if exclude_self:
            order = [j for j in order if j != i] if i in order else order[:k]
        result.append(order)
    return np.array(result)


def tie_heavy(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Half-integer coordinates: float32 distances are exact, so many distances tie exactly."""
    x = np.round(rng.standard_normal((n, dim)) * 2) / 2
    x[5] = x[7] = x[3]  # exact duplicates
    return x.astype(np.float32)


@pytest.mark.parametrize("backend, device", ENGINES)
@pytest.mark.parametrize("chunk_size", [None, 40])
def test_self_retrieval_matches_oracle_with_ties(backend, device, chunk_size):
    rng = np.random.default_rng(0)
    x = tie_heavy(rng, 230, 3)
    distances, indices, _ = search(x, x, 12, backend=backend, device=device, exclude_self=True, chunk_size=chunk_size)
    expected = oracle(x, x, 12, exclude_self=True)
    np.testing.assert_array_equal(indices, expected)
    exact = ((x[:, None, :].astype(np.float64) - x[expected]) ** 2).sum(-1)
    np.testing.assert_allclose(distances, exact, atol=1e-5)
    assert distances.dtype == np.float32 and indices.dtype == np.int64


@pytest.mark.parametrize("backend, device", ENGINES)
@pytest.mark.parametrize("chunk_size", [None, 9])
def test_query_gallery_matches_oracle_with_ties(backend, device, chunk_size):
    rng = np.random.default_rng(1)
    gallery = tie_heavy(rng, 150, 2)
    queries = np.concatenate([gallery[:4], np.round(rng.standard_normal((30, 2)) * 2) / 2]).astype(np.float32)
    _, indices, _ = search(queries, gallery, 20, backend=backend, device=device, chunk_size=chunk_size)
    np.testing.assert_array_equal(indices, oracle(queries, gallery, 20, exclude_self=False))


def test_blocked_symmetric_search_agrees_with_faiss_on_random_data():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((700, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    reference = knn_search(x, x, 30, backend="faiss-flat", exclude_self=True)[1]
    for chunk_size in (None, 100, 64):  # one block; several blocks (rows and columns offered)
        _, indices, method = knn_search(torch.from_numpy(x), x, 30, exclude_self=True, chunk_size=chunk_size)
        np.testing.assert_array_equal(indices, reference)
        assert "symmetric" in method
    np.testing.assert_array_equal(indices, oracle(x, x, 30, exclude_self=True))


def test_duplicates_of_the_query_stay_and_come_in_index_order():
    x = np.array([[0.0, 0], [0, 0], [0, 0], [5, 5]], dtype=np.float32)
    _, indices, _ = knn_search(x, x, 2, exclude_self=True)
    np.testing.assert_array_equal(indices, [[1, 2], [0, 2], [0, 1], [0, 1]])


@pytest.mark.parametrize("backend, device", ENGINES)
def test_duplicates_far_from_the_origin_get_zero_distances_not_rounded_negatives(backend, device):
    """|x|^2 + |y|^2 - 2 x.y rounds below 0 for equal vectors of large norm; distances stay >= 0, ties by index."""
    rng = np.random.default_rng(3)
    points = (rng.standard_normal((6, 64)) * 300 + 1000).astype(np.float32)
    x = np.repeat(points, 3, axis=0)  # each point three times
    distances, indices, _ = search(x, x, 5, backend=backend, device=device, exclude_self=True)
    assert np.isfinite(distances).all() and (distances >= 0).all()
    np.testing.assert_array_equal(distances[:, :2], 0)
    np.testing.assert_array_equal(indices, oracle(x, x, 5, exclude_self=True))


def test_query_missing_from_its_first_k_plus_1_drops_the_last():
    x = np.zeros((4, 3), dtype=np.float32)  # all tie at distance 0: the first k+1 are 0 and 1
    _, indices, _ = knn_search(x, x, 1, exclude_self=True)
    np.testing.assert_array_equal(indices[:, 0], [1, 0, 0, 0])


def test_queries_as_first_rows_of_a_larger_gallery():
    rng = np.random.default_rng(3)
    gallery = tie_heavy(rng, 60, 2)
    _, indices, method = knn_search(gallery[:10], gallery, 5, exclude_self=True, chunk_size=4)
    np.testing.assert_array_equal(indices, oracle(gallery[:10], gallery, 5, exclude_self=True)[:10])
    assert "symmetric" not in method


@pytest.mark.parametrize("backend, device", ENGINES)
def test_near_ties_are_ordered_by_exact_distance(backend, device):
    """Float32 rounding makes both distances ~0; the exact ones are 1e-8 (index 0) and 0 (index 1)."""
    rng = np.random.default_rng(4)
    query = np.full((1, 64), 1.0, dtype=np.float32)
    near = query.copy()
    near[0, 0] = np.float32(1.0001)
    gallery = np.concatenate([near, query, 5 + rng.standard_normal((20, 64))]).astype(np.float32)
    distances, indices, _ = search(query, gallery, 2, backend=backend, device=device)
    np.testing.assert_array_equal(indices, [[1, 0]])
    assert distances[0, 0] == 0 and 0 < distances[0, 1] < 1e-7


def test_invalid_requests_raise():
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="k=5"):
        knn_search(x, x, 5, exclude_self=True)
    with pytest.raises(ValueError, match="unknown kNN backend"):
        knn_search(x, x, 1, backend="annoy")
    with pytest.raises(ValueError, match="finite"):
        knn_search(np.full((2, 2), np.nan, dtype=np.float32), x, 1)
    with pytest.raises(ValueError, match="dimension"):
        knn_search(np.zeros((2, 3), dtype=np.float32), x, 1)
    with pytest.raises(ValueError, match="huge"):
        knn_search(np.full((2, 2), 1e20, dtype=np.float32), x, 1)


def test_faiss_gpu_without_a_gpu_says_how_to_fix_it():
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(ConfigError, match="--backend faiss"):
        knn_search(x, x, 1, backend="faiss-gpu")


def clustered_sorted_by_class(rng: np.random.Generator, n_classes: int, per_class: int, dim: int) -> np.ndarray:
    """Tight clusters stored class after class, as datasets often are, with exact duplicates inside."""
    centres = rng.standard_normal((n_classes, dim)) * 3
    x = np.repeat(centres, per_class, axis=0) + 0.3 * rng.standard_normal((n_classes * per_class, dim))
    x[1::7] = x[::7][: len(x[1::7])]  # a duplicate next to every 7th point
    return x.astype(np.float32)


@pytest.mark.parametrize("chunk_size", [None, 48])
def test_cpu_engine_on_class_sorted_data_matches_oracle(chunk_size):
    rng = np.random.default_rng(5)
    x = clustered_sorted_by_class(rng, 30, 11, 6)
    _, indices, method = knn_search(x, x, 15, exclude_self=True, chunk_size=chunk_size)
    assert method == "blocked sgemm (symmetric) (cpu)"
    np.testing.assert_array_equal(indices, oracle(x, x, 15, exclude_self=True))
    queries = x[::5] + 0.01
    _, indices, method = knn_search(queries, x, 9, chunk_size=chunk_size)
    assert method == "blocked sgemm (cpu)"
    np.testing.assert_array_equal(indices, oracle(queries, x, 9, exclude_self=False))


@pytest.mark.parametrize("symmetric", [True, False])
def test_rows_whose_limits_fall_short_are_recomputed_and_full_buffers_merge(monkeypatch, symmetric):
    """Limits far too tight (every row falls short) and buffers of one pool (every offer merges): still exact."""
    calls = {"exact_pools": 0, "merges": 0}
    exact_pools, merge = knn_cpu._exact_pools, knn_cpu._Candidates._merge

    def counting_exact_pools(*args):
        calls["exact_pools"] += 1
        return exact_pools(*args)

    def counting_merge(self, *args):
        calls["merges"] += 1
        return merge(self, *args)

    monkeypatch.setattr(knn_cpu, "_exact_pools", counting_exact_pools)
    monkeypatch.setattr(knn_cpu._Candidates, "_merge", counting_merge)
    monkeypatch.setattr(knn_cpu, "ADMIT_SPREAD", 0.01)
    monkeypatch.setattr(knn_cpu, "ADMIT_MIN_RANK", 1)
    monkeypatch.setattr(knn_cpu, "CAPACITY", 1)
    rng = np.random.default_rng(6)
    x = tie_heavy(rng, 260, 3)
    queries = x if symmetric else x[:40] + 0.25
    _, indices, _ = knn_search(queries, x, 10, exclude_self=symmetric, chunk_size=64)
    np.testing.assert_array_equal(indices, oracle(queries, x, 10, exclude_self=symmetric))
    assert calls["exact_pools"] > 0 and calls["merges"] > 0


def test_one_worker_and_all_workers_agree():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    parallel = knn_search(x, x, 20, exclude_self=True, chunk_size=40)
    with threadpool_limits(1, user_api="blas"):
        serial = knn_search(x, x, 20, exclude_self=True, chunk_size=40)
    np.testing.assert_array_equal(parallel[1], serial[1])
    np.testing.assert_array_equal(parallel[0], serial[0])
    np.testing.assert_array_equal(parallel[1], oracle(x, x, 20, exclude_self=True))


@pytest.mark.parametrize("axis", [0, 1])
def test_rank_in_tiles_bounds_the_rank_th_smallest_from_above(axis):
    rng = np.random.default_rng(8)
    distances = rng.random((37, 301)).astype(np.float32)
    distances = distances if axis == 1 else distances.T.copy()
    bound = knn_cpu._rank_in_tiles(distances, rank=5, pool=6, axis=axis)
    exact = np.sort(distances, axis=axis).take(4, axis=axis)
    assert bound.shape == exact.shape and (bound >= exact).all()
    assert ((distances <= np.expand_dims(bound, axis)).sum(axis) >= 5).all()


def test_exact_cuts_reorder_only_near_ties_that_straddle_a_cut(monkeypatch):
    """Query 0's engine pool reads [0, 1, 1, 4, 9] for items 0..4, as if float32 had rounded item 1 (exact 1 + 1e-6)
    and item 2 (exact 1) to one value; the exact order puts item 2 first."""
    x = np.array([[0, 0], [1, 1e-3], [1, 0], [2, 0], [3, 0]], dtype=np.float32)
    engine = knn_module.cpu_self_search

    def rounding_engine(*args):
        keys = engine(*args)
        keys[0] = make_keys(np.array([0, 1, 1, 4, 9], dtype=np.float32), np.arange(5))
        return keys

    recomputed_rows = []
    exact_distances = knn_ties._exact_distances

    def spy(q, g, rows, cols):
        recomputed_rows.extend(rows.tolist())
        return exact_distances(q, g, rows, cols)

    monkeypatch.setattr(knn_module, "cpu_self_search", rounding_engine)
    monkeypatch.setattr(knn_ties, "_exact_distances", spy)
    assert knn_search(x, x, 3, exclude_self=True)[1][0].tolist() == [2, 1, 3]  # default: the exact order
    # Cut 1: the query's own entry comes first in its pool, so its first neighbour is the pool's positions 1..2.
    assert knn_search(x, x, 1, exclude_self=True, exact_cuts=[1])[1][0].tolist() == [2]
    recomputed_rows.clear()
    _, indices, _ = knn_search(x, x, 3, exclude_self=True, exact_cuts=[3])  # the tie is within the first 3
    assert indices[0].tolist() == [1, 2, 3] and 0 not in recomputed_rows
    for bad_cuts in ([4], [0], [[1, 2]], 3, [1.7]):
        with pytest.raises(ValueError, match="exact_cuts"):
            knn_search(x, x, 3, exclude_self=True, exact_cuts=bad_cuts)
