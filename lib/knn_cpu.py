"""The CPU kNN engine: exact search by admission-limited blocked sgemm (see lib/knn.py for the contract).

Its cost is the matrix products, so it does as few flops as it can: in self-retrieval each pair of points is
computed once and offered to both of its points. An entry is kept only if its distance is within its row's
admission limit. The limits come from a sample: a systematic sample of the points against everyone gives each
row a limit that about ``ADMIT_SPREAD`` pools' worth of gallery items pass, and these limits are folded into
the products (augmented rows carry ``|x|^2 - shift``), so finding the few admitted entries of a block is one
comparison with a constant. A row whose pool is not provably complete under its limit (rare) is recomputed
against the whole gallery. benchmarks/bench_eval.py compares it with faiss.
"""

import functools
import threading

import numpy as np

from lib.blas_workers import blas_workers, blocks
from lib.knn_keys import EMPTY_KEY, key_distances, make_keys

MAX_SAMPLE = 8192  # gallery points whose distances set the admission limits
SAMPLE_WIDTH = 1024  # columns per phase 0 product (sample x SAMPLE_WIDTH)
SPAN = 512  # rows per matrix product; self-retrieval computes SPAN / N of its flops twice (diagonal blocks)
WIDTH = 4096  # gallery columns per matrix product
FINISH_ROWS = 4096  # rows per step of the final selection
ADMIT_SPREAD = 2.0  # admission limits aim at this many pools' worth of gallery items per row
ADMIT_MIN_RANK = 24  # the limit is at least the 24th smallest sample distance: relative noise <= 1/sqrt(24)
CAPACITY = 3  # candidate buffer per row, in pools
_FOLD_SLACK = 2**-20  # relative margin of the folded comparisons, far above their float32 rounding


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
        self.keys = np.full((n_rows, CAPACITY * size), EMPTY_KEY, dtype=np.int64)
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
        table = np.full((rows.size, capacity + counts.max()), EMPTY_KEY, dtype=np.int64)
        table[:, :capacity] = self.keys[rows]
        owner = np.repeat(np.arange(rows.size), counts)
        table[owner, capacity + np.arange(keys.size) - np.repeat(np.cumsum(counts) - counts, counts)] = keys
        best = np.partition(table, self.size - 1, axis=1)[:, : self.size]
        self.keys[rows] = EMPTY_KEY
        self.keys[rows, : self.size] = best
        self.count[rows] = self.size
        self.admit[rows] = np.minimum(self.admit[rows], key_distances(best[:, -1]))

    def finish(self, run) -> tuple[np.ndarray, np.ndarray]:
        """(the ``size`` best keys of every row, the rows whose result is not provably exact)."""
        best = np.empty((self.keys.shape[0], self.size), dtype=np.int64)

        def select(rows: slice) -> None:
            best[rows] = np.partition(self.keys[rows], self.size - 1, axis=1)[:, : self.size]

        run(functools.partial(select, rows) for rows in blocks(0, self.keys.shape[0], FINISH_ROWS))
        complete = key_distances(best[:, -1]) <= self.admit  # an empty slot reads as NaN: incomplete
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

        tasks = [functools.partial(load, part, rows, row_order, True, shared) for part in blocks(0, len(rows), SPAN)]
        if not shared:
            tasks += [
                functools.partial(load, part, cols, col_order, False, True) for part in blocks(0, len(cols), SPAN)
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


def cpu_self_search(x: np.ndarray, _: np.ndarray, pool: int, chunk_size: int | None) -> np.ndarray:
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
    with blas_workers() as run:
        products = _Products(run, max(span * width, sample * phase0_width), x, order, None, None)
        for part in (blocks(0, sample, phase0_width), blocks(sample, n, phase0_width)):  # S x S first: limits of S
            run(functools.partial(_sample_task, candidates, products, cols, sample, rank, order) for cols in part)
        products.fold(candidates.first - candidates.first.min(), candidates.first)
        spans = blocks(sample, n, span)
        run(
            functools.partial(_limited_task, candidates, products, rows, cols, order, to_cols=cols != rows)
            for rows in spans
            for cols in [rows, *blocks(rows.stop, n, width)]
        )
        best, failed = candidates.finish(run)
    if failed.size:
        best[failed] = _exact_pools(products, failed, pool, order)
    keys = np.empty_like(best)
    keys[order] = best
    return keys


def cpu_cross_search(q: np.ndarray, g: np.ndarray, pool: int, chunk_size: int | None) -> np.ndarray:
    """Keys of every query's ``pool`` nearest gallery items: a gallery sample first, then limited blocks."""
    sample, span, width = _layout(chunk_size, pool, g.shape[0], symmetric=False)
    order = _sample_first(g.shape[0], sample)
    candidates = _Candidates(q.shape[0], pool)
    rank = _admission_rank(pool, sample, g.shape[0])
    spans = blocks(0, q.shape[0], span)
    with blas_workers() as run:
        products = _Products(run, span * max(width, sample), q, None, g, order)
        run(functools.partial(_query_sample_task, candidates, products, rows, sample, rank, order) for rows in spans)
        products.fold(candidates.first, 0)
        run(
            functools.partial(_limited_task, candidates, products, rows, cols, order, to_cols=False)
            for rows in spans
            for cols in blocks(sample, g.shape[0], width)
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
    """Offer block entries to their rows and/or columns, each where within its limit, in one call.

    Entries go to the columns' buffers grouped by column, by a stable (radix) sort. Both kinds of targets can
    share one offer because a block offered both ways has disjoint row and column ranges.
    """
    rows, cols = block
    parts = []
    if to_rows:
        keep = distances <= candidates.admit[rows][hit_rows]
        parts.append((hit_rows[keep] + rows.start, distances[keep], order[cols][hit_cols[keep]]))
    if to_cols:
        keep = np.flatnonzero(distances <= candidates.admit[cols][hit_cols])
        kept_cols = hit_cols[keep]
        narrow = cols.stop - cols.start <= 2**16
        by_column = keep[np.argsort(kept_cols.astype(np.uint16) if narrow else kept_cols, kind="stable")]
        parts.append((hit_cols[by_column] + cols.start, distances[by_column], order[rows][hit_rows[by_column]]))
    targets, values, partners = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    candidates.offer(targets, make_keys(values, partners))


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
        keys = make_keys(left @ products.right.T, order[None, :])
        best[start : start + step] = np.partition(keys, pool - 1, axis=1)[:, :pool]
    return best
