"""Exact k-nearest-neighbour search by squared Euclidean distance, on faiss or on chunked torch matmuls.

Evaluation needs the k nearest gallery items of every query once (METHOD.md §8.1). Three exact engines:

* torch (CPU or CUDA): blocked matrix products that never hold more than one block of distances. In
  self-retrieval the distance matrix is symmetric, so each off-diagonal block is computed once and offered
  to its rows and to its columns: half the flops of a flat search. Each query keeps a running pool of its
  best candidates; a block only contributes the entries at or below the pool's current worst distance, so
  after the first block almost nothing needs sorting.
* faiss CPU ``IndexFlatL2`` and faiss GPU ``GpuIndexFlatL2`` (k <= 2048; beyond that, torch on the GPU).

Determinism (why every engine returns the same neighbours): an engine returns a pool of the
``k + POOL_EXTRA`` best candidates by its own float32 distances. The pool is ordered by (distance, index),
so exact ties go to the smaller index. Float32 rounding can still order two nearly equidistant items
differently in different engines (or block sizes). So every candidate whose float32 distance lies within a
generous rounding tolerance of a neighbour in its pool gets its distance recomputed in float64 from the
vectors, and the pool is re-sorted by (distance, index). The result is the exact order, whatever the engine,
unless rounding errors exceed the tolerance (see ``_resolve_near_ties``) or more than ``POOL_EXTRA`` items lie
within it of the k-th neighbour's distance. Exact duplicates get bit-identical distances, hence index order.
"""

import warnings

import numpy as np
import torch
from torch import Tensor

from lib.faiss_backend import import_faiss, require_faiss_gpu

BACKENDS = ("auto", "faiss", "faiss-gpu", "torch+sklearn", "faiss-flat")
POOL_EXTRA = 16  # candidates beyond k kept for the exact re-ranking of near ties
FAISS_GPU_MAX_K = 2048  # faiss GPU's top-k limit
CPU_BLOCK = 8192  # rows per block; a block of distances is at most BLOCK**2 floats
GPU_BLOCK = 16384
TILE = 32  # columns whose minimum is compared first when few entries of a block can enter a pool
NEAR_TIE = 16  # near-tie tolerance in units of sqrt(D + 2) float32 roundoffs, see _resolve_near_ties
REPAIR_PAIRS = 16384  # candidate pairs per float64 recomputation step
_U32 = 2**-24  # unit roundoff of float32


def knn_search(
    queries: Tensor | np.ndarray,
    gallery: Tensor | np.ndarray,
    k: int,
    *,
    backend: str = "auto",
    device: torch.device | str | int | None = None,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """The ``k`` nearest gallery rows of each query: (squared distances (Q,k) float32, indices (Q,k) int64, method).

    ``exclude_self``: the queries are gallery rows 0..Q-1. k+1 neighbours are found and the query's own index
    is dropped, or the (k+1)-th neighbour if the query is not among them (ties at distance 0, METHOD.md §8.2).
    ``backend``: "auto", "faiss" and "torch+sklearn" use the blocked matmul engine on the device (in
    self-retrieval it does half the flops of a flat search; benchmarks/bench_eval.py compares it with faiss);
    "faiss-gpu" uses faiss on the GPU up to its k limit; "faiss-flat" forces faiss' CPU ``IndexFlatL2``.
    ``chunk_size``: rows per block (memory is about chunk_size**2 floats); None picks a default per device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    target = _resolve_device(device, queries, backend)
    q = _as_matrix(queries, "queries", target)
    g = q if queries is gallery else _as_matrix(gallery, "gallery", target)
    if not all(torch.isfinite(x.sum()) for x in {id(q): q, id(g): g}.values()):
        raise ValueError("queries and gallery must be finite (no NaN or inf) and not huge")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the gallery has {g.shape[1]}")
    if exclude_self and q.shape[0] > g.shape[0]:
        raise ValueError("exclude_self needs the queries to be the first rows of the gallery")
    needed = k + 1 if exclude_self else k
    if k < 1 or needed > g.shape[0]:
        raise ValueError(f"cannot find k={k} neighbours in a gallery of {g.shape[0] - int(exclude_self)} items")
    pool = min(g.shape[0], needed + POOL_EXTRA)
    block = chunk_size or (GPU_BLOCK if target.type == "cuda" else CPU_BLOCK)
    if block < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    if backend == "faiss-flat":
        keys = _faiss_search(q, g, pool, gpu=None)
        method = "faiss IndexFlatL2 (cpu)"
    elif backend == "faiss-gpu" and pool <= FAISS_GPU_MAX_K:
        require_faiss_gpu()
        keys = _faiss_search(q, g, pool, gpu=target.index or 0)
        method = f"faiss GpuIndexFlatL2 ({target})"
    else:
        symmetric = exclude_self and q.shape[0] == g.shape[0]
        search = _torch_self_search if symmetric else _torch_cross_search
        keys = search(q, g, pool, block)
        method = f"torch blocked matmul{' (symmetric)' if symmetric else ''} ({target})"
        if backend == "faiss-gpu":
            method += f", faiss-gpu fallback: k={pool} > {FAISS_GPU_MAX_K}"
    values, indices = _sort_pool(keys)
    values, indices = _resolve_near_ties(q, g, values, indices, needed)
    values, indices = _drop_self(values, indices, k) if exclude_self else (values[:, :k], indices[:, :k])
    return values.float().cpu().numpy(), indices.cpu().numpy(), method


def _resolve_device(device, queries, backend: str) -> torch.device:
    if backend == "faiss-flat":
        return torch.device("cpu")
    if device is not None:
        return torch.device(f"cuda:{device}") if isinstance(device, int) else torch.device(device)
    if isinstance(queries, Tensor) and queries.is_cuda:
        return queries.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_matrix(x: Tensor | np.ndarray, name: str, device: torch.device) -> Tensor:
    matrix = torch.as_tensor(x).to(device=device, dtype=torch.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {tuple(matrix.shape)}")
    return matrix.contiguous()


# ---------------------------------------------------------------- engines: each returns an unordered pool of keys
# A pool entry is one int64 key, (float32 bits of the distance) << 32 | gallery index: for non-negative floats
# the bits sort like the float, so sorting keys sorts by (distance, index), and keys are unique in a row.

_EMPTY = torch.iinfo(torch.int64).max  # key of an empty pool slot: after every real key


def _keys(distances: Tensor, indices: Tensor) -> Tensor:
    return (_non_negative(distances).view(torch.int32).to(torch.int64) << 32) | indices


def _key_distances(keys: Tensor) -> Tensor:
    return (keys >> 32).to(torch.int32).view(torch.float32)


def _non_negative(values: Tensor) -> Tensor:
    """Rounding can make a squared distance slightly negative; the true value is >= 0 (and never -0.0)."""
    return torch.where(values > 0, values, torch.zeros((), dtype=values.dtype, device=values.device))


def _faiss_search(q: Tensor, g: Tensor, pool: int, gpu: int | None) -> Tensor:
    faiss = import_faiss()
    if gpu is None:
        index = faiss.IndexFlatL2(g.shape[1])
    else:
        config = faiss.GpuIndexFlatConfig()
        config.device = int(gpu)
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), g.shape[1], config)
    index.add(g.cpu().numpy())
    values, indices = index.search(q.cpu().numpy(), pool)
    return _keys(torch.from_numpy(values), torch.from_numpy(indices)).to(q.device)


def _augment(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rows [x, |x|^2, 1] and [-2x, 1, |x|^2]: one matmul then gives the squared distances, no extra pass."""
    norms = (x * x).sum(1, keepdim=True)
    ones = torch.ones_like(norms)
    return torch.cat([x, norms, ones], 1), torch.cat([-2 * x, ones, norms], 1)


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T. On CPU through numpy's OpenBLAS, measured ~1.5x faster than torch's MKL on AMD processors."""
    if a.is_cuda:
        return a @ b.T
    return torch.from_numpy(np.matmul(a.numpy(), b.numpy().T))


def _block_bounds(n: int, block: int, pool: int) -> list[int]:
    """Nearly equal blocks of about ``block`` rows, starting at multiples of TILE, none narrower than ``pool``."""
    count = max(1, min(-(-n // block), n // (pool + TILE)))
    return [TILE * round(i * n / count / TILE) for i in range(count)] + [n]


def _torch_self_search(x: Tensor, _: Tensor, pool: int, block: int) -> Tensor:
    left, right = _augment(x)
    bounds = _block_bounds(x.shape[0], block, pool)
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    state = _RunningPool(x.shape[0], pool, x.device)
    for start, stop in spans:  # diagonal blocks first: every row gets a threshold from its own block
        distances = _matmul(left[start:stop], right[start:stop])
        state.set_threshold(start, distances)
        state.offer(start, start, distances, _dense_hits(distances, state.limit(start, stop)))
    for i, (start_i, stop_i) in enumerate(spans):
        for start_j, stop_j in spans[i + 1 :]:
            distances = _matmul(left[start_i:stop_i], right[start_j:stop_j])
            state.offer(start_i, start_j, distances, _tiled_row_hits(distances, state.limit(start_i, stop_i)))
            state.offer(start_j, start_i, distances.T, _tiled_column_hits(distances, state.limit(start_j, stop_j)))
    return state.keys


def _torch_cross_search(q: Tensor, g: Tensor, pool: int, block: int) -> Tensor:
    left, _ = _augment(q)
    _, right = _augment(g)
    rows = max(1, block * block // g.shape[0])
    state = _RunningPool(q.shape[0], pool, q.device)
    for start in range(0, q.shape[0], rows):
        distances = _matmul(left[start : start + rows], right)
        state.set_threshold(start, distances)
        state.offer(start, 0, distances, _dense_hits(distances, state.limit(start, start + distances.shape[0])))
    return state.keys


# A "hits" triple (targets, candidates, sorted): block coordinates of the entries at or below their target
# row's limit, and whether the targets come out sorted (then the merge needs no sort).


def _dense_hits(distances: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Hits by one comparison pass; ``limit`` (R, 1) holds the row limits."""
    rows, cols = torch.nonzero(distances <= limit, as_tuple=True)
    return rows, cols, True


def _tiled_row_hits(distances: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, bool]:
    """``_dense_hits`` for when few entries pass: compare the minima of row tiles first, then the hit tiles.

    One min-reduction over the block is cheaper than comparing and then scanning a mask of the whole block.
    """
    n_cols = distances.shape[1]
    tiled = n_cols - n_cols % TILE
    tiles = distances[:, :tiled].unflatten(1, (-1, TILE))
    rows, tile_ids = torch.nonzero(tiles.amin(2) <= limit, as_tuple=True)
    hit, offset = torch.nonzero(tiles[rows, tile_ids] <= limit[rows], as_tuple=True)
    rows, cols = rows[hit], tile_ids[hit] * TILE + offset
    if tiled == n_cols:
        return rows, cols, True
    tail_rows, tail_cols, _ = _dense_hits(distances[:, tiled:], limit)
    return torch.cat([rows, tail_rows]), torch.cat([cols, tail_cols + tiled]), False


def _tiled_column_hits(distances: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Hits of the block's columns (targets) among its rows; ``limit`` (C, 1) holds the column limits.

    Tiles run down the columns (a min over a transposed view is slow); targets come out sorted.
    """
    n_rows = distances.shape[0]
    tiled = n_rows - n_rows % TILE
    tiles = distances[:tiled].unflatten(0, (-1, TILE))
    cols, tile_ids = torch.nonzero((tiles.amin(1) <= limit.T).T.contiguous(), as_tuple=True)
    hit, offset = torch.nonzero(tiles[tile_ids, :, cols] <= limit[cols], as_tuple=True)
    cols, rows = cols[hit], tile_ids[hit] * TILE + offset
    if tiled == n_rows:
        return cols, rows, True
    tail_rows, tail_cols = torch.nonzero(distances[tiled:] <= limit.T, as_tuple=True)
    return torch.cat([cols, tail_cols]), torch.cat([rows, tail_rows + tiled]), False


class _RunningPool:
    """Per row, the keys of the ``size`` best candidates seen so far, unordered.

    A row's threshold is its current worst pooled distance: only block entries at or below it can enter, so
    a block costs one pass plus work on the few entries that pass. Entries equal to the threshold are offered
    too, so that exact ties are decided by index.
    """

    def __init__(self, n_rows: int, size: int, device: torch.device):
        self.size = size
        self.keys = torch.full((n_rows, size), _EMPTY, dtype=torch.int64, device=device)
        self.threshold = torch.full((n_rows,), float("inf"), device=device)

    def limit(self, start: int, stop: int) -> Tensor:
        return self.threshold[start:stop, None]

    def set_threshold(self, row_start: int, distances: Tensor) -> None:
        """A first threshold from one block of at least ``size`` columns, before anything is pooled.

        The size-th smallest of the tile minima bounds the size-th smallest distance from above (the minima
        are distinct entries), and is found on TILE times fewer numbers.
        """
        width = max(1, min(TILE, distances.shape[1] // (2 * self.size)))
        tiled = distances.shape[1] - distances.shape[1] % width
        minima = distances[:, :tiled].unflatten(1, (-1, width)).amin(2)
        kth = torch.topk(minima, self.size, dim=1, largest=False).values[:, -1]
        self.threshold[row_start : row_start + distances.shape[0]] = kth

    def offer(self, row_start: int, col_start: int, distances: Tensor, hits: tuple[Tensor, Tensor, bool]) -> None:
        """Merge the ``hits`` of a block of distances whose rows and columns start at these pool indices."""
        rows, cols, rows_sorted = hits
        if rows.numel() == 0:
            return
        keys = _keys(distances[rows, cols], cols + col_start)
        if not rows_sorted:
            order = torch.argsort(rows)
            rows, keys = rows[order], keys[order]
        per_row = torch.bincount(rows, minlength=distances.shape[0])
        touched = torch.nonzero(per_row, as_tuple=True)[0]
        compact = torch.cumsum(per_row > 0, 0) - 1
        slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(per_row, 0) - per_row)[rows]
        new = torch.full((touched.numel(), int(per_row.max())), _EMPTY, dtype=torch.int64, device=rows.device)
        new[compact[rows], slot] = keys
        merged = torch.cat([self.keys[row_start + touched], new], 1)
        kth = torch.kthvalue(merged, self.size, dim=1, keepdim=True).values
        self.keys[row_start + touched] = merged[merged <= kth].view(-1, self.size)  # exactly ``size`` per row
        self.threshold[row_start + touched] = _key_distances(kth[:, 0])


def _sort_pool(keys: Tensor) -> tuple[Tensor, Tensor]:
    keys = torch.sort(keys, dim=1).values
    return _key_distances(keys), keys & 0xFFFFFFFF


# ---------------------------------------------------------------- exact ordering of near ties


def _resolve_near_ties(q: Tensor, g: Tensor, values: Tensor, indices: Tensor, needed: int) -> tuple[Tensor, Tensor]:
    """Recompute in float64 the pooled distances that float32 rounding may misorder; re-sort those rows.

    Candidates whose float32 distances lie within ``NEAR_TIE * sqrt(D + 2) * u * (|q|^2 + max |g|^2)``
    (u = 2**-24) of a neighbour in their pool form a near-tie group. That is far above the typical float32
    accumulation error, which grows like sqrt(D) u; the worst-case bound (D + 2) u is sqrt(D) times wider
    and would flag most candidates of concentrated, normalised embeddings. Groups that start at or beyond
    position ``needed`` cannot change the returned neighbours and are left alone.
    """
    tolerance = NEAR_TIE * (q.shape[1] + 2) ** 0.5 * _U32 * ((q * q).sum(1) + (g * g).sum(1)[indices].max(1).values)
    close = (values[:, 1:] - values[:, :-1]) <= tolerance[:, None]
    flagged = torch.zeros_like(values, dtype=torch.bool)
    flagged[:, 1:] |= close
    flagged[:, :-1] |= close
    starts_group = torch.cat([torch.ones_like(close[:, :1]), ~close], 1)
    position = torch.arange(values.shape[1], device=values.device).expand_as(values)
    group_start = torch.cummax(torch.where(starts_group, position, 0), dim=1).values
    rows, slots = torch.nonzero(flagged & (group_start < needed), as_tuple=True)
    if rows.numel() == 0:
        return values, indices
    exact = values.double()
    exact[rows, slots] = _exact_distances(q, g, rows, indices[rows, slots])
    touched = torch.unique(rows)
    sub_values, sub_indices = exact[touched], indices[touched]
    by_index = torch.argsort(sub_indices, dim=1)
    by_distance = torch.argsort(torch.gather(sub_values, 1, by_index), dim=1, stable=True)
    order = torch.gather(by_index, 1, by_distance)
    exact[touched] = torch.gather(sub_values, 1, order)
    indices = indices.clone()
    indices[touched] = torch.gather(sub_indices, 1, order)
    return exact, indices


def _exact_distances(q: Tensor, g: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """float64 |q|^2 + |g|^2 - 2 q.g for the pairs (rows[i], cols[i]), with rows sorted ascending.

    Products of float32 numbers are exact in float64, so these are exact up to ~1e-13 relative, and identical
    vectors get bit-identical values. On CPU a sampled sparse matmul avoids gathering a (pairs, D) copy.
    """
    q64 = q.double()
    g64 = q64 if g is q else g.double()
    dots = torch.empty(rows.numel(), dtype=torch.float64, device=q.device)
    if q.is_cuda:
        for start in range(0, rows.numel(), REPAIR_PAIRS):
            r, c = rows[start : start + REPAIR_PAIRS], cols[start : start + REPAIR_PAIRS]
            dots[start : start + REPAIR_PAIRS] = (q64[r] * g64[c]).sum(1)
    else:
        row_starts = torch.zeros(q.shape[0] + 1, dtype=torch.int64)
        row_starts[1:] = torch.cumsum(torch.bincount(rows, minlength=q.shape[0]), 0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            pattern = torch.sparse_csr_tensor(
                row_starts, cols, torch.zeros_like(dots), size=(q.shape[0], g.shape[0]), check_invariants=False
            )
            dots = torch.sparse.sampled_addmm(pattern, q64, g64.T, beta=0.0).values()
    return _non_negative((q64 * q64).sum(1)[rows] + (g64 * g64).sum(1)[cols] - 2 * dots)


def _drop_self(values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Remove each query's own index from its first k+1 neighbours, or the (k+1)-th if it is absent."""
    head_values, head_indices = values[:, : k + 1], indices[:, : k + 1]
    own = torch.arange(indices.shape[0], device=indices.device)[:, None]
    is_self = head_indices == own
    position = torch.where(is_self.any(1), is_self.int().argmax(1), torch.full_like(own[:, 0], k))
    keep = torch.arange(k + 1, device=indices.device)[None, :] != position[:, None]
    return head_values[keep].view(-1, k), head_indices[keep].view(-1, k)
