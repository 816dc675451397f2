"""Exact k-nearest-neighbour search by squared Euclidean distance, on CPU sgemm, faiss or torch.

Evaluation needs the k nearest gallery items of every query once (METHOD.md §8.1). Exact engines:

* CPU (the default there): admission-limited blocked sgemm through numpy, each pair of points computed once in
  self-retrieval (lib/knn_cpu.py).
* torch (CUDA, and ``torch+sklearn``): blocked matrix products with running per-row pools (lib/knn_torch.py).
* faiss CPU ``IndexFlatL2`` and faiss GPU ``GpuIndexFlatL2`` (up to its limit of 2048 candidates, which are k
  plus the pool extras below; beyond that, torch on the GPU).

Determinism (why every engine returns the same neighbours at the requested cuts): an engine returns a pool of the
``k + POOL_EXTRA`` best candidates by its own float32 distances. The pool is ordered by (distance, index),
so exact ties go to the smaller index. Float32 rounding can still order two nearly equidistant items
differently in different engines (or block sizes). So candidates whose float32 distances lie within a
generous rounding tolerance of each other form near-tie groups; each group that straddles a requested cut
(by default every position) gets its distances recomputed in float64 from the vectors and is re-sorted by
(distance, index). The result is exact at every cut (by default the exact order), whatever the engine,
unless rounding errors exceed the tolerance (lib/knn_ties.py) or more than ``POOL_EXTRA`` items lie within
it of the k-th neighbour's distance. Exact duplicates get bit-identical distances, hence index order, in the
groups that are recomputed; between cuts, items keep the engine's float32 order and values, which engines may
round differently (only the sets at the cuts are then engine-independent). Within an engine, results are
bit-identical from run to run, whatever the thread timing.
"""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lib.faiss_backend import import_faiss, require_faiss_gpu
from lib.knn_cpu import cpu_cross_search, cpu_self_search
from lib.knn_keys import key_distances, make_keys
from lib.knn_ties import resolve_near_ties
from lib.knn_torch import torch_search

BACKENDS = ("auto", "faiss", "faiss-gpu", "torch+sklearn", "faiss-flat")
POOL_EXTRA = 16  # candidates beyond k kept for the exact re-ranking of near ties
FAISS_GPU_MAX_K = 2048  # faiss GPU's top-k limit


def knn_search(
    queries: Tensor | np.ndarray,
    gallery: Tensor | np.ndarray,
    k: int,
    *,
    backend: str = "auto",
    device: torch.device | str | int | None = None,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    exact_cuts: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """The ``k`` nearest gallery rows of each query: (squared distances (Q,k) float32, indices (Q,k) int64, method).

    ``exclude_self``: the queries are gallery rows 0..Q-1. k+1 neighbours are found and the query's own index
    is dropped, or the (k+1)-th neighbour if the query is not among them (ties at distance 0, METHOD.md §8.2).
    ``backend``: "auto" and "faiss" use the fastest exact engine of the device: blocked sgemm on CPU (in
    self-retrieval about half the flops of a flat search), blocked torch matmuls on CUDA; "torch+sklearn" uses
    the torch engine; "faiss-gpu" uses faiss on the GPU up to its k limit; "faiss-flat" forces faiss' CPU
    ``IndexFlatL2``.
    ``chunk_size``: block edge (memory is about chunk_size**2 floats per worker); None picks a default. Small
    values exercise many blocks in tests.
    ``exact_cuts``: the counts c whose first c neighbours must be exactly the c nearest (ties by index); None:
    every c from 1 to k, i.e. the exact order. Near ties that straddle no cut keep their float32 order, so a
    caller that needs only some cuts (a metric's R@k sets and its first R positions) saves most of the float64
    re-ranking.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    q = _as_matrix(queries, "queries")
    g = q if queries is gallery else _as_matrix(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the gallery has {g.shape[1]}")
    if not all(np.isfinite(np.einsum("ij,ij->i", x, x)).all() for x in {id(q): q, id(g): g}.values()):
        raise ValueError("queries and gallery must be finite (no NaN or inf) and not huge")
    if exclude_self and q.shape[0] > g.shape[0]:
        raise ValueError("exclude_self needs the queries to be the first rows of the gallery")
    needed = k + 1 if exclude_self else k
    if k < 1 or needed > g.shape[0]:
        raise ValueError(f"cannot find k={k} neighbours in a gallery of {g.shape[0] - int(exclude_self)} items")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    cuts = _pool_cuts(exact_cuts, k, exclude_self)
    pool = min(g.shape[0], needed + POOL_EXTRA)
    symmetric = exclude_self and q.shape[0] == g.shape[0]

    if backend == "faiss-flat":
        keys, method = _faiss_search(q, g, pool, gpu=None), "faiss IndexFlatL2 (cpu)"
    elif backend == "faiss-gpu" and pool <= FAISS_GPU_MAX_K:
        require_faiss_gpu()
        target = _resolve_device(device, queries)
        keys, method = _faiss_search(q, g, pool, gpu=target.index or 0), f"faiss GpuIndexFlatL2 ({target})"
    else:
        target = _resolve_device(device, queries)
        if target.type == "cpu" and backend != "torch+sklearn":
            search = cpu_self_search if symmetric else cpu_cross_search
            keys = search(q, g, pool, chunk_size)
            method = f"blocked sgemm{' (symmetric)' if symmetric else ''} (cpu)"
        else:
            keys = torch_search(q, g, pool, chunk_size, target, symmetric)
            method = f"torch blocked matmul{' (symmetric)' if symmetric else ''} ({target})"
        if backend == "faiss-gpu":
            method += f", faiss-gpu fallback: {pool} candidates (k = {k} + {pool - k} extra) > {FAISS_GPU_MAX_K}"
    keys.sort(axis=1)
    values, indices = resolve_near_ties(q, g, key_distances(keys), keys & 0xFFFFFFFF, cuts)
    values, indices = _drop_self(values, indices, k) if exclude_self else (values[:, :k].copy(), indices[:, :k].copy())
    return values, indices, method


def _pool_cuts(exact_cuts: Sequence[int] | None, k: int, exclude_self: bool) -> np.ndarray:
    """The pool positions whose sets must be exact. Without self-exclusion they are the cuts; with it, the
    query's own entry (dropped later) may come before a cut c or not, so both c and c + 1 count."""
    if exact_cuts is None:
        cuts = np.arange(1, k + 1)
    else:
        given = np.asarray(exact_cuts)
        if given.ndim != 1 or not (given.size == 0 or np.issubdtype(given.dtype, np.integer)):
            raise ValueError(f"exact_cuts must be a sequence of integer counts, got {exact_cuts!r}")
        cuts = np.unique(given.astype(np.int64))
        if cuts.size and (cuts[0] < 1 or cuts[-1] > k):
            raise ValueError(f"exact_cuts must be counts between 1 and k={k}, got {exact_cuts!r}")
    return np.union1d(cuts, cuts + 1) if exclude_self else cuts


def _resolve_device(device, queries) -> torch.device:
    if device is not None:
        return torch.device(f"cuda:{device}") if isinstance(device, int) else torch.device(device)
    if isinstance(queries, Tensor) and queries.is_cuda:
        return queries.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_matrix(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32 numpy copy or view; CUDA tensors come to the host (the pools are sorted there)."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    matrix = np.ascontiguousarray(x, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {tuple(matrix.shape)}")
    return matrix


def _faiss_search(q: np.ndarray, g: np.ndarray, pool: int, gpu: int | None) -> np.ndarray:
    faiss = import_faiss()
    if gpu is None:
        index = faiss.IndexFlatL2(g.shape[1])
    else:
        config = faiss.GpuIndexFlatConfig()
        config.device = int(gpu)
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), g.shape[1], config)
    index.add(g)
    values, indices = index.search(q, pool)
    return make_keys(values, indices)


def _drop_self(values: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own index from its first k+1 neighbours, or the (k+1)-th if it is absent."""
    head_values, head_indices = values[:, : k + 1], indices[:, : k + 1]
    is_self = head_indices == np.arange(indices.shape[0])[:, None]
    position = np.where(is_self.any(1), is_self.argmax(1), k)
    keep = np.arange(k + 1)[None, :] != position[:, None]
    return head_values[keep].reshape(-1, k), head_indices[keep].reshape(-1, k)
