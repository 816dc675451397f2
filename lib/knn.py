"""Exact k-nearest-neighbour search by squared Euclidean distance, on CPU sgemm, faiss or torch.

Evaluation needs the k nearest gallery items of every query once (METHOD.md §8.1). Exact engines:

* CPU (the default there): blocked sgemm through numpy, on as many worker threads as the BLAS would use. Its
  cost is the matrix products, so it does as few flops as it can: in self-retrieval each pair of points is
  computed once and offered to both of its points. An entry is kept only if its distance is within its
  row's admission limit. The limits come from a sample: a systematic sample of the points against everyone
  gives each row a limit that about ``ADMIT_SPREAD`` pools' worth of gallery items pass, and these limits are
  folded into the products (augmented rows carry ``|x|^2 - shift``), so finding the few admitted entries of
  a block is one comparison with a constant. A row whose pool is not provably complete under its limit
  (rare) is recomputed against the whole gallery. benchmarks/bench_eval.py compares it with faiss.
* torch (CUDA, and ``torch+sklearn``): blocked matrix products with running per-row pools.
* faiss CPU ``IndexFlatL2`` and faiss GPU ``GpuIndexFlatL2`` (k <= 2048; beyond that, torch on the GPU).

Determinism (why every engine returns the same neighbours): an engine returns a pool of the
``k + POOL_EXTRA`` best candidates by its own float32 distances. The pool is ordered by (distance, index),
so exact ties go to the smaller index. Float32 rounding can still order two nearly equidistant items
differently in different engines (or block sizes). So every candidate whose float32 distance lies within a
generous rounding tolerance of a neighbour in its pool gets its distance recomputed in float64 from the
vectors, and each such group is re-sorted by (distance, index). The result is the exact order, whatever the
engine, unless rounding errors exceed the tolerance (see ``_resolve_near_ties``) or more than ``POOL_EXTRA``
items lie within it of the k-th neighbour's distance. Exact duplicates get bit-identical distances, hence
index order. Within an engine, results are bit-identical from run to run, whatever the thread timing.
"""

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch import Tensor

from lib.faiss_backend import import_faiss, require_faiss_gpu

BACKENDS = ("auto", "faiss", "faiss-gpu", "torch+sklearn", "faiss-flat")
POOL_EXTRA = 16  # candidates beyond k kept for the exact re-ranking of near ties
FAISS_GPU_MAX_K = 2048  # faiss GPU's top-k limit
NEAR_TIE = 16  # near-tie tolerance in units of sqrt(D + 2) float32 roundoffs, see _resolve_near_ties
EXACT_PAIRS = 1024  # candidate pairs per float64 recomputation step (its buffers stay in cache)
EXACT_TASK = 65536  # candidate pairs per worker task
_U32 = 2**-24  # unit roundoff of float32

# CPU engine
MAX_SAMPLE = 8192  # gallery points whose distances set the admission limits
SAMPLE_WIDTH = 1024  # columns per phase 0 product (sample x SAMPLE_WIDTH)
SPAN = 512  # rows per matrix product; self-retrieval computes SPAN / N of its flops twice (diagonal blocks)
WIDTH = 4096  # gallery columns per matrix product
FINISH_ROWS = 4096  # rows per step of the final selection
ADMIT_SPREAD = 2.0  # admission limits aim at this many pools' worth of gallery items per row
ADMIT_MIN_RANK = 24  # the limit is at least the 24th smallest sample distance: relative noise <= 1/sqrt(24)
CAPACITY = 3  # candidate buffer per row, in pools
_FOLD_SLACK = 2**-20  # relative margin of the folded comparisons, far above their float32 rounding

# torch engine
GPU_BLOCK = 16384  # rows per block; a block of distances is at most BLOCK**2 floats
TORCH_CPU_BLOCK = 8192
TILE = 32  # columns whose minimum is compared first when few entries of a block can enter a pool


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
    ``backend``: "auto" and "faiss" use the fastest exact engine of the device: blocked sgemm on CPU (in
    self-retrieval about half the flops of a flat search), blocked torch matmuls on CUDA; "torch+sklearn" uses
    the torch engine; "faiss-gpu" uses faiss on the GPU up to its k limit; "faiss-flat" forces faiss' CPU
    ``IndexFlatL2``.
    ``chunk_size``: block edge (memory is about chunk_size**2 floats per worker); None picks a default. Small
    values exercise many blocks in tests.
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
            search = _cpu_self_search if symmetric else _cpu_cross_search
            keys = search(q, g, pool, chunk_size)
            method = f"blocked sgemm{' (symmetric)' if symmetric else ''} (cpu)"
        else:
            keys = _torch_search(q, g, pool, chunk_size, target, symmetric)
            method = f"torch blocked matmul{' (symmetric)' if symmetric else ''} ({target})"
        if backend == "faiss-gpu":
            method += f", faiss-gpu fallback: k={pool} > {FAISS_GPU_MAX_K}"
    keys.sort(axis=1)
    values, indices = _resolve_near_ties(q, g, _key_distances(keys), keys & 0xFFFFFFFF, needed)
    values, indices = _drop_self(values, indices, k) if exclude_self else (values[:, :k], indices[:, :k])
    return values.astype(np.float32), indices, method


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


# ---------------------------------------------------------------- pool keys
# A pool entry is one int64 key, (float32 bits of the distance) << 32 | gallery index: for non-negative floats
# the bits sort like the float, so sorting keys sorts by (distance, index), and keys are unique in a row.

_EMPTY = np.iinfo(np.int64).max  # key of an empty slot: after every real key; its distance reads as NaN


def _make_keys(distances: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """float32 ``distances``. Rounding can make a squared distance slightly negative; the true value is >= 0:
    negative floats (and -0.0) have negative int32 bits, which become the bits of +0.0."""
    bits = np.maximum(np.ascontiguousarray(distances, dtype=np.float32).view(np.int32), 0)
    return (bits.astype(np.int64) << 32) | indices


def _key_distances(keys: np.ndarray) -> np.ndarray:
    return (keys >> 32).astype(np.int32).view(np.float32)


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
    return _make_keys(values, indices)


# ---------------------------------------------------------------- CPU engine: admission-limited blocked sgemm


class _Candidates:
    """Per row, a buffer of candidate keys (unordered) and the admission limit of new ones; thread-safe offers.

    A block entry may enter row r's buffer only if its distance is <= ``admit[r]``. When a buffer would
    overflow, it is cut to its ``size`` best keys and ``admit[r]`` drops to the size-th best distance, which
    no final neighbour of r can exceed. So a row's result is exact when its buffer ends with ``size`` keys
    within its limit: everything ever turned away was beyond it. ``finish`` reports the other rows. Limits
    only decrease, so a worker that reads one while another lowers it merely admits a little more.
    """

    def __init__(self, n_rows: int, size: int):
        self.size = size
        self.keys = np.full((n_rows, CAPACITY * size), _EMPTY, dtype=np.int64)
        self.count = np.zeros(n_rows, dtype=np.int64)
        self.admit = np.full(n_rows, np.inf, dtype=np.float32)
        self.first = np.full(n_rows, np.inf, dtype=np.float32)
        self._lock = threading.Lock()

    def set_limits(self, rows: slice, limits: np.ndarray) -> None:
        """The first limits of ``rows`` (before any offer to them). Merges lower ``admit`` but never ``first``,
        which does not depend on the order in which workers ran."""
        self.first[rows] = self.admit[rows] = limits

    def offer(self, targets: np.ndarray, keys: np.ndarray) -> None:
        """Add ``keys`` to the buffers of rows ``targets``, in which equal rows are adjacent."""
        if targets.size == 0:
            return
        capacity = self.keys.shape[1]
        starts = np.flatnonzero(np.diff(targets, prepend=-1))
        rows, counts = targets[starts], np.diff(starts, append=targets.size)
        offsets = np.arange(targets.size) - np.repeat(starts, counts)
        with self._lock:
            filled = self.count[rows]
            room = filled + counts <= capacity
            slots = targets * capacity + np.repeat(filled, counts) + offsets
            if room.all():
                np.put(self.keys, slots, keys)
                self.count[rows] = filled + counts
                return
            per_key = np.repeat(room, counts)
            np.put(self.keys, slots[per_key], keys[per_key])
            self.count[rows[room]] += counts[room]
            self._merge(rows[~room], counts[~room], keys[~per_key])

    def _merge(self, rows: np.ndarray, counts: np.ndarray, keys: np.ndarray) -> None:
        """Cut the buffers of ``rows`` plus their new ``keys`` (``counts`` each) to their ``size`` best."""
        capacity = self.keys.shape[1]
        table = np.full((rows.size, capacity + counts.max()), _EMPTY, dtype=np.int64)
        table[:, :capacity] = self.keys[rows]
        owner = np.repeat(np.arange(rows.size), counts)
        table[owner, capacity + np.arange(keys.size) - np.repeat(np.cumsum(counts) - counts, counts)] = keys
        best = np.partition(table, self.size - 1, axis=1)[:, : self.size]
        self.keys[rows] = _EMPTY
        self.keys[rows, : self.size] = best
        self.count[rows] = self.size
        self.admit[rows] = np.minimum(self.admit[rows], _key_distances(best[:, -1]))

    def finish(self, run) -> tuple[np.ndarray, np.ndarray]:
        """(the ``size`` best keys of every row, the rows whose result is not provably exact)."""
        best = np.empty((self.keys.shape[0], self.size), dtype=np.int64)

        def select(rows: slice) -> None:
            best[rows] = np.partition(self.keys[rows], self.size - 1, axis=1)[:, : self.size]

        run(functools.partial(select, rows) for rows in _blocks(0, self.keys.shape[0], FINISH_ROWS))
        complete = _key_distances(best[:, -1]) <= self.admit  # an empty slot reads as NaN: incomplete
        return best, np.flatnonzero(~complete)


class _Products:
    """Blocks of squared distances minus frozen per-row and per-column shifts, one sgemm each.

    Rows are augmented to [x, |x|^2 - row_shift, 1] and columns to [-2y, 1, |y|^2 - col_shift], so the product
    is |x - y|^2 - row_shift - col_shift with no pass over the block. numpy's OpenBLAS sgemm is used: measured
    ~1.4x faster than torch's MKL on the AMD processors here. Each worker thread gets its own output buffer.
    """

    def __init__(self, run, block_entries: int, rows: np.ndarray, row_order, cols: np.ndarray | None, col_order):
        """Rows ``rows[row_order]`` and columns ``cols[col_order]`` (an order None keeps the given one; ``cols``
        None: the rows again), copied in parallel by ``run``."""
        dim, shared = rows.shape[1], cols is None
        cols, col_order = (rows, row_order) if shared else (cols, col_order)
        self.left = np.empty((rows.shape[0], dim + 2), dtype=np.float32)
        self.right = np.empty((cols.shape[0], dim + 2), dtype=np.float32)
        self.row_norms = np.empty(rows.shape[0], dtype=np.float32)
        self.col_norms = self.row_norms if shared else np.empty(cols.shape[0], dtype=np.float32)

        def load(target: slice, source: np.ndarray, order, left: bool, right: bool) -> None:
            points = source[target] if order is None else source[order[target]]
            norms = self.row_norms if left else self.col_norms
            norms[target] = np.einsum("ij,ij->i", points, points)
            if left:
                self.left[target, :dim] = points
            if right:
                np.multiply(points, -2, out=self.right[target, :dim])

        tasks = [functools.partial(load, part, rows, row_order, True, shared) for part in _blocks(0, len(rows), SPAN)]
        if not shared:
            tasks += [
                functools.partial(load, part, cols, col_order, False, True) for part in _blocks(0, len(cols), SPAN)
            ]
        run(tasks)
        self.left[:, dim + 1] = 1
        self.right[:, dim] = 1
        self.fold(0, 0)
        self._entries = block_entries
        self._local = threading.local()

    def fold(self, row_shift, col_shift) -> None:
        """Set the shifts (arrays or scalars); only between batches of tasks, as every block in flight reads them.

        ``slack`` is how far above 0 a shifted entry may round while its distance is still within the shifts.
        """
        self.row_shift = np.broadcast_to(row_shift, self.row_norms.shape).astype(np.float32)
        self.col_shift = np.broadcast_to(col_shift, self.col_norms.shape).astype(np.float32)
        self.left[:, -2] = self.row_norms - self.row_shift
        self.right[:, -1] = self.col_norms - self.col_shift
        scale = np.abs(self.row_shift).max(initial=0) + np.abs(self.col_shift).max(initial=0)
        self.slack = np.float32(_FOLD_SLACK * scale)

    def block(self, rows: slice, cols: slice) -> np.ndarray:
        if not hasattr(self._local, "out"):
            self._local.out = np.empty(self._entries, dtype=np.float32)
            self._local.masks = np.empty((2, self._entries), dtype=bool)
        left, right = self.left[rows], self.right[cols]
        out = self._local.out[: left.shape[0] * right.shape[0]].reshape(left.shape[0], right.shape[0])
        return np.matmul(left, right.T, out=out)

    def entries_at_most(self, block: np.ndarray, *limits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, columns, values) of the entries <= any of ``limits`` (scalars or broadcastable), rows ascending.

        One comparison pass per limit and one scan of the mask; the values come from the flat block, which
        is ~3x faster than 2-D fancy indexing.
        """
        mask, other = (m[: block.size].reshape(block.shape) for m in self._local.masks)
        np.less_equal(block, limits[0], out=mask)
        for limit in limits[1:]:
            np.logical_or(mask, np.less_equal(block, limit, out=other), out=mask)
        flat = np.flatnonzero(mask)
        rows, cols = np.divmod(flat, block.shape[1])
        return rows, cols, block.reshape(-1).take(flat)


def _cpu_self_search(x: np.ndarray, _: np.ndarray, pool: int, chunk_size: int | None) -> np.ndarray:
    """Keys of every point's ``pool`` nearest points (itself included), each pair of points computed once.

    Phase 0: a systematic sample S of the points against everyone; every point's distances to S set its
    admission limit. Phase 1: the other points in spans of rows, each span against itself and the points
    after it, with the first limits folded into the product; an entry is offered to its row and to its
    column. Every pair is computed once, by a product that does not depend on the workers' timing, so the
    results are deterministic.
    """
    n = x.shape[0]
    sample, span, width = _layout(chunk_size, pool, n, symmetric=True)
    order = _sample_first(n, sample)
    phase0_width = width if chunk_size else SAMPLE_WIDTH
    candidates = _Candidates(n, pool)
    rank = _admission_rank(pool, sample, n)
    with _parallel() as run:
        products = _Products(run, max(span * width, sample * phase0_width), x, order, None, None)
        for part in (_blocks(0, sample, phase0_width), _blocks(sample, n, phase0_width)):  # S x S first: limits of S
            run(functools.partial(_sample_task, candidates, products, cols, sample, rank, order) for cols in part)
        products.fold(candidates.first - candidates.first.min(), candidates.first)
        spans = _blocks(sample, n, span)
        run(
            functools.partial(_limited_task, candidates, products, rows, cols, order, to_cols=cols != rows)
            for rows in spans
            for cols in [rows, *_blocks(rows.stop, n, width)]
        )
        best, failed = candidates.finish(run)
    if failed.size:
        best[failed] = _exact_pools(products, failed, pool, order)
    keys = np.empty_like(best)
    keys[order] = best
    return keys


def _cpu_cross_search(q: np.ndarray, g: np.ndarray, pool: int, chunk_size: int | None) -> np.ndarray:
    """Keys of every query's ``pool`` nearest gallery items: a gallery sample first, then limited blocks."""
    sample, span, width = _layout(chunk_size, pool, g.shape[0], symmetric=False)
    order = _sample_first(g.shape[0], sample)
    candidates = _Candidates(q.shape[0], pool)
    rank = _admission_rank(pool, sample, g.shape[0])
    spans = _blocks(0, q.shape[0], span)
    with _parallel() as run:
        products = _Products(run, span * max(width, sample), q, None, g, order)
        run(functools.partial(_query_sample_task, candidates, products, rows, sample, rank, order) for rows in spans)
        products.fold(candidates.first, 0)
        run(
            functools.partial(_limited_task, candidates, products, rows, cols, order, to_cols=False)
            for rows in spans
            for cols in _blocks(sample, g.shape[0], width)
        )
        best, failed = candidates.finish(run)
    if failed.size:
        best[failed] = _exact_pools(products, failed, pool, order)
    return best


def _sample_task(candidates, products, cols: slice, sample: int, rank: int, order) -> None:
    """Phase 0 of self-retrieval: the sample against ``cols``; sets the columns' limits and offers entries.

    Within S x S, each column gets its whole column, so rows need no offers there.
    """
    distances = products.block(slice(0, sample), cols)
    admit = _rank_in_tiles(distances, rank, candidates.size, axis=0)
    candidates.set_limits(cols, admit)
    with_rows = cols.start >= sample
    limits = (candidates.admit[:sample, None], admit) if with_rows else (admit,)
    hit_rows, hit_cols, values = products.entries_at_most(distances, *limits)
    _offer(candidates, hit_rows, hit_cols, values, (slice(0, sample), cols), order, with_rows, True)


def _query_sample_task(candidates, products, rows: slice, sample: int, rank: int, order) -> None:
    """Phase 0 of query/gallery search: ``rows`` against the gallery sample; sets their limits, offers entries."""
    distances = products.block(rows, slice(0, sample))
    admit = _rank_in_tiles(distances, rank, candidates.size, axis=1)
    candidates.set_limits(rows, admit)
    hit_rows, hit_cols, values = products.entries_at_most(distances, admit[:, None])
    _offer(candidates, hit_rows, hit_cols, values, (rows, slice(0, sample)), order, True, False)


def _limited_task(candidates, products, rows: slice, cols: slice, order, to_cols: bool) -> None:
    """Phase 1: one block of distances minus the folded shifts; offer what the rows (and columns) admit.

    The shifts are made of the first limits, which later limits never exceed. In self-retrieval column c's
    shift is its first limit a_c and row r's is a_r - min a, so they add up to at least both limits; in
    query/gallery search the row's shift is its first limit. Either way every entry within its row's or column's
    limit has shifted <= 0 (up to rounding: ``slack``), and one comparison with a constant finds them, and
    few others. A self-retrieval diagonal block (rows == cols) is offered to its rows only.
    """
    shifted = products.block(rows, cols)
    hit_rows, hit_cols, values = products.entries_at_most(shifted, products.slack)
    distances = values + (products.row_shift[rows][hit_rows] + products.col_shift[cols][hit_cols])
    _offer(candidates, hit_rows, hit_cols, distances, (rows, cols), order, True, to_cols)


def _offer(candidates, hit_rows, hit_cols, distances, block: tuple[slice, slice], order, to_rows, to_cols) -> None:
    """Offer block entries to their rows and/or columns, each where within its limit.

    Entries go to the columns' buffers grouped by column, by a stable (radix) sort.
    """
    rows, cols = block
    if to_rows:
        keep = distances <= candidates.admit[rows][hit_rows]
        candidates.offer(hit_rows[keep] + rows.start, _make_keys(distances[keep], order[cols][hit_cols[keep]]))
    if to_cols:
        keep = distances <= candidates.admit[cols][hit_cols]
        hit_rows, hit_cols = hit_rows[keep], hit_cols[keep]
        by_column = np.argsort(
            hit_cols.astype(np.uint16) if cols.stop - cols.start <= 2**16 else hit_cols, kind="stable"
        )
        keys = _make_keys(distances[keep], order[rows][hit_rows])
        candidates.offer(hit_cols[by_column] + cols.start, keys[by_column])


@contextlib.contextmanager
def _parallel():
    """A runner of batches of independent tasks on as many threads as the BLAS would use, each with a
    single-threaded BLAS: sgemm is as fast per core, and one worker's comparisons and merges (single-threaded
    numpy) overlap the other's products instead of leaving a core idle."""
    workers = max(1, min((info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"), default=1))
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        yield lambda tasks: [future.result() for future in [pool.submit(task) for task in tasks]]


def _layout(chunk_size: int | None, pool: int, n_gallery: int, symmetric: bool) -> tuple[int, int, int]:
    """(sample size, rows per product, columns per product); the sample holds at least one pool.

    In self-retrieval the sample's own block is computed whole, so the sample is only as large as the
    admission rank ADMIT_MIN_RANK needs.
    """
    if chunk_size is not None:
        sample, span, width = chunk_size, max(1, chunk_size // 4), chunk_size
    elif symmetric:
        sample = min(MAX_SAMPLE, int(np.ceil(ADMIT_MIN_RANK * n_gallery / (ADMIT_SPREAD * pool))))
        span, width = SPAN, WIDTH
    else:
        sample, span, width = MAX_SAMPLE, SPAN, WIDTH
    return min(n_gallery, max(sample, pool)), span, width


def _blocks(start: int, stop: int, width: int) -> list[slice]:
    return [slice(first, min(first + width, stop)) for first in range(start, stop, width)]


def _sample_first(n: int, sample: int) -> np.ndarray:
    """A permutation whose first ``sample`` points are every (n / sample)-th point: a systematic sample.

    Datasets are often sorted by class; the sample must look like the whole gallery for its limits to hold.
    """
    groups = -(-n // sample)
    return np.argsort(np.arange(n) % groups, kind="stable")


def _admission_rank(pool: int, sample: int, n_gallery: int) -> int:
    """The rank, within the sample, of a distance below which about ADMIT_SPREAD pools of the gallery lie."""
    return min(pool, max(ADMIT_MIN_RANK, int(np.ceil(ADMIT_SPREAD * pool * sample / n_gallery))))


def _rank_in_tiles(distances: np.ndarray, rank: int, pool: int, axis: int) -> np.ndarray:
    """Per row (axis=1) or column (axis=0): the rank-th smallest of the minima of disjoint tiles of entries.

    It bounds the rank-th smallest entry from above (the minima are distinct entries), so at least ``rank``
    entries lie within it, and it is found on fewer numbers. Never below 0, the least true distance. Tiles
    are strided, so that the minima are taken between contiguous runs, which vectorises.
    """
    length = distances.shape[axis]
    tile = max(1, length // (4 * pool))
    usable = length - length % tile
    if axis == 0:
        minima = np.ascontiguousarray(distances[:usable].reshape(tile, usable // tile, -1).min(0).T)
    else:
        minima = distances[:, :usable].reshape(distances.shape[0], tile, usable // tile).min(1)
    return np.maximum(np.partition(minima, rank - 1, axis=1)[:, rank - 1], 0)  # rounding can make it < 0


def _exact_pools(products: _Products, rows: np.ndarray, pool: int, order: np.ndarray) -> np.ndarray:
    """The ``pool`` best keys of ``rows`` against the whole gallery, for rows whose limits fell short.

    Runs after every task; it leaves the products unshifted.
    """
    best = np.empty((rows.size, pool), dtype=np.int64)
    products.right[:, -1] = products.col_norms
    step = max(1, (1 << 21) // products.right.shape[0])
    for start in range(0, rows.size, step):
        chunk = rows[start : start + step]
        left = products.left[chunk]
        left[:, -2] = products.row_norms[chunk]
        keys = _make_keys(left @ products.right.T, order[None, :])
        best[start : start + step] = np.partition(keys, pool - 1, axis=1)[:, :pool]
    return best


# ---------------------------------------------------------------- torch engine: running pools (CUDA, torch+sklearn)


def _torch_search(q: np.ndarray, g: np.ndarray, pool: int, chunk_size, device: torch.device, symmetric: bool):
    x = torch.from_numpy(q).to(device)
    y = x if g is q else torch.from_numpy(g).to(device)
    block = chunk_size or (GPU_BLOCK if device.type == "cuda" else TORCH_CPU_BLOCK)
    keys = _torch_self_search(x, block, pool) if symmetric else _torch_cross_search(x, y, pool, block)
    return keys.cpu().numpy()


_TORCH_EMPTY = torch.iinfo(torch.int64).max


def _torch_keys(distances: Tensor, indices: Tensor) -> Tensor:
    distances = torch.where(distances > 0, distances, torch.zeros((), dtype=distances.dtype, device=distances.device))
    return (distances.view(torch.int32).to(torch.int64) << 32) | indices


def _torch_key_distances(keys: Tensor) -> Tensor:
    return (keys >> 32).to(torch.int32).view(torch.float32)


def _augment(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rows [x, |x|^2, 1] and [-2x, 1, |x|^2]: one matmul then gives the squared distances, no extra pass."""
    norms = (x * x).sum(1, keepdim=True)
    ones = torch.ones_like(norms)
    return torch.cat([x, norms, ones], 1), torch.cat([-2 * x, ones, norms], 1)


def _block_bounds(n: int, block: int, pool: int) -> list[int]:
    """Nearly equal blocks of about ``block`` rows, starting at multiples of TILE, none narrower than ``pool``."""
    count = max(1, min(-(-n // block), n // (pool + TILE)))
    return [TILE * round(i * n / count / TILE) for i in range(count)] + [n]


def _torch_self_search(x: Tensor, block: int, pool: int) -> Tensor:
    left, right = _augment(x)
    bounds = _block_bounds(x.shape[0], block, pool)
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    state = _RunningPool(x.shape[0], pool, x.device)
    for start, stop in spans:  # diagonal blocks first: every row gets a threshold from its own block
        distances = left[start:stop] @ right[start:stop].T
        state.set_threshold(start, distances)
        state.offer(start, start, distances, _dense_hits(distances, state.limit(start, stop)))
    for i, (start_i, stop_i) in enumerate(spans):
        for start_j, stop_j in spans[i + 1 :]:
            distances = left[start_i:stop_i] @ right[start_j:stop_j].T
            state.offer(start_i, start_j, distances, _tiled_row_hits(distances, state.limit(start_i, stop_i)))
            state.offer(start_j, start_i, distances.T, _tiled_column_hits(distances, state.limit(start_j, stop_j)))
    return state.keys


def _torch_cross_search(q: Tensor, g: Tensor, pool: int, block: int) -> Tensor:
    left, _ = _augment(q)
    _, right = _augment(g)
    rows = max(1, block * block // g.shape[0])
    state = _RunningPool(q.shape[0], pool, q.device)
    for start in range(0, q.shape[0], rows):
        distances = left[start : start + rows] @ right.T
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
        self.keys = torch.full((n_rows, size), _TORCH_EMPTY, dtype=torch.int64, device=device)
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
        keys = _torch_keys(distances[rows, cols], cols + col_start)
        if not rows_sorted:
            order = torch.argsort(rows)
            rows, keys = rows[order], keys[order]
        per_row = torch.bincount(rows, minlength=distances.shape[0])
        touched = torch.nonzero(per_row, as_tuple=True)[0]
        compact = torch.cumsum(per_row > 0, 0) - 1
        slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(per_row, 0) - per_row)[rows]
        new = torch.full((touched.numel(), int(per_row.max())), _TORCH_EMPTY, dtype=torch.int64, device=rows.device)
        new[compact[rows], slot] = keys
        merged = torch.cat([self.keys[row_start + touched], new], 1)
        kth = torch.kthvalue(merged, self.size, dim=1, keepdim=True).values
        self.keys[row_start + touched] = merged[merged <= kth].view(-1, self.size)  # exactly ``size`` per row
        self.threshold[row_start + touched] = _torch_key_distances(kth[:, 0])


# ---------------------------------------------------------------- exact ordering of near ties


def _resolve_near_ties(
    q: np.ndarray, g: np.ndarray, values: np.ndarray, indices: np.ndarray, needed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Recompute in float64 the pooled distances that float32 rounding may misorder; re-sort each such group.

    Candidates whose float32 distances lie within ``NEAR_TIE * sqrt(D + 2) * u * (|q|^2 + max |g|^2)``
    (u = 2**-24) of a neighbour in their pool form a near-tie group. That is far above the typical float32
    accumulation error, which grows like sqrt(D) u; the worst-case bound (D + 2) u is sqrt(D) times wider
    and would flag most candidates of concentrated, normalised embeddings. Groups that start at or beyond
    position ``needed`` cannot change the returned neighbours and are left alone. Exact values move less
    than the gaps between groups, so sorting within each group orders the whole pool.
    """
    g_norms = np.einsum("ij,ij->i", g, g)
    q_norms = g_norms[: q.shape[0]] if g is q else np.einsum("ij,ij->i", q, q)
    tolerance = np.float32(NEAR_TIE * (q.shape[1] + 2) ** 0.5 * _U32) * (q_norms + g_norms[indices].max(1))
    close = np.diff(values, axis=1) <= tolerance[:, None]  # close[:, j]: positions j and j + 1 are tied
    flagged = np.zeros(values.shape, dtype=bool)
    flagged[:, 1:] |= close
    flagged[:, :-1] |= close
    flagged[:, needed:] &= np.logical_and.accumulate(close[:, needed - 1 :], axis=1)  # tied back to needed - 1
    flat = np.flatnonzero(flagged)
    exact = values.astype(np.float64)
    if flat.size == 0:
        return exact, indices
    rows, positions = np.divmod(flat, values.shape[1])
    cols = indices.reshape(-1)[flat]
    distances = _exact_distances(q, g, rows, cols)
    joined = (positions > 0) & close.reshape(-1)[rows * close.shape[1] + np.maximum(positions - 1, 0)]
    order = _order_within_groups(distances, cols, np.flatnonzero(~joined))
    exact.reshape(-1)[flat] = distances[order]
    indices.reshape(-1)[flat] = cols[order]
    return exact, indices


def _order_within_groups(distances: np.ndarray, cols: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The permutation that sorts each run [starts[i], starts[i + 1]) by (distance, index), runs of equal
    length at a time (most near-tie groups are pairs); much faster than one lexsort over all runs."""
    lengths = np.diff(starts, append=distances.size)
    order = np.arange(distances.size)
    for length in np.unique(lengths):
        members = starts[lengths == length, None] + np.arange(length)
        by = np.lexsort((cols[members], distances[members]), axis=1)
        order[members] = np.take_along_axis(members, by, axis=1)
    return order


def _exact_distances(q: np.ndarray, g: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 |q|^2 + |g|^2 - 2 q.g for the pairs (rows[i], cols[i]), on all workers.

    Products of float32 numbers are exact in float64, so these are exact up to ~1e-13 relative, and identical
    vectors get bit-identical values.
    """
    dots = np.empty(rows.size, dtype=np.float64)

    def compute(pairs: slice) -> None:
        left, right = (np.empty((EXACT_PAIRS, q.shape[1]), dtype=np.float32) for _ in range(2))
        for part in _blocks(pairs.start, pairs.stop, EXACT_PAIRS):
            count = part.stop - part.start
            np.take(q, rows[part], axis=0, out=left[:count])
            np.take(g, cols[part], axis=0, out=right[:count])
            dots[part] = np.einsum("ij,ij->i", left[:count], right[:count], dtype=np.float64)

    with _parallel() as run:
        run(functools.partial(compute, pairs) for pairs in _blocks(0, rows.size, EXACT_TASK))
    q_norms = np.einsum("ij,ij->i", q, q, dtype=np.float64)
    g_norms = q_norms if g is q else np.einsum("ij,ij->i", g, g, dtype=np.float64)
    return np.maximum(q_norms[rows] + g_norms[cols] - 2 * dots, 0)


def _drop_self(values: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own index from its first k+1 neighbours, or the (k+1)-th if it is absent."""
    head_values, head_indices = values[:, : k + 1], indices[:, : k + 1]
    is_self = head_indices == np.arange(indices.shape[0])[:, None]
    position = np.where(is_self.any(1), is_self.argmax(1), k)
    keep = np.arange(k + 1)[None, :] != position[:, None]
    return head_values[keep].reshape(-1, k), head_indices[keep].reshape(-1, k)
