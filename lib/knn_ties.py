"""The exact order of near ties: float64 recomputation of the pooled distances that float32 may misorder."""

import functools

import numpy as np

from lib.blas_workers import blas_workers, blocks

NEAR_TIE = 16  # near-tie tolerance in units of sqrt(D + 2) float32 roundoffs, see resolve_near_ties
EXACT_PAIRS = 1024  # candidate pairs per float64 recomputation step (its buffers stay in cache)
EXACT_TASK = 65536  # candidate pairs per worker task
_U32 = 2**-24  # unit roundoff of float32


def resolve_near_ties(
    q: np.ndarray, g: np.ndarray, values: np.ndarray, indices: np.ndarray, cuts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Recompute in float64 the pooled distances that float32 rounding may misorder at ``cuts``; re-sort them.

    ``values`` (float32) and ``indices`` are the sorted pools; both are updated in place and returned, the
    recomputed distances rounded to float32 (after ordering).

    Candidates whose float32 distances lie within ``NEAR_TIE * sqrt(D + 2) * u * (|q|^2 + max |g|^2)``
    (u = 2**-24) of a neighbour in their pool form a near-tie group. That is far above the typical float32
    accumulation error, which grows like sqrt(D) u; the worst-case bound (D + 2) u is sqrt(D) times wider
    and would flag most candidates of concentrated, normalised embeddings. Exact values move less than the
    gaps between groups, so sorting a group within itself puts it in its exact place. A cut c (1 <= c <= pool) asks
    for the exact set of the first c pool entries; only groups that hold both positions c - 1 and c can
    change such a set, so only they are recomputed: in large galleries most near ties lie between cuts.
    """
    g_norms = np.einsum("ij,ij->i", g, g)
    q_norms = g_norms[: q.shape[0]] if g is q else np.einsum("ij,ij->i", q, q)
    tolerance = np.float32(NEAR_TIE * (q.shape[1] + 2) ** 0.5 * _U32) * (q_norms + g_norms[indices].max(1))
    close = np.diff(values, axis=1) <= tolerance[:, None]  # close[:, j]: positions j and j + 1 are tied
    flat = np.flatnonzero(_groups_across(close, cuts[cuts < values.shape[1]]))
    if flat.size == 0:
        return values, indices
    rows, positions = np.divmod(flat, values.shape[1])
    cols = indices.reshape(-1)[flat]
    distances = _exact_distances(q, g, rows, cols)
    joined = (positions > 0) & close.reshape(-1)[rows * close.shape[1] + np.maximum(positions - 1, 0)]
    order = _order_within_groups(distances, cols, np.flatnonzero(~joined))
    values.reshape(-1)[flat] = distances[order]
    indices.reshape(-1)[flat] = cols[order]
    return values, indices


def _groups_across(close: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Flags of the pool positions whose near-tie group holds a pair (c - 1, c) for a cut c.

    Groups are numbered along each row (a new number after every pair that is not close); a group is chosen
    when one of its pairs at a cut is close, and every position of a chosen group is flagged. Only rows with
    such a pair are numbered.
    """
    flagged = np.zeros((close.shape[0], close.shape[1] + 1), dtype=bool)
    across = close[:, cuts - 1]
    rows = np.flatnonzero(across.any(1))
    across = across[rows]
    group = np.zeros((rows.size, flagged.shape[1]), dtype=np.int32)
    np.cumsum(~close[rows], axis=1, out=group[:, 1:])
    chosen = np.zeros(group.shape, dtype=bool)
    chosen[np.broadcast_to(np.arange(rows.size)[:, None], across.shape)[across], group[:, cuts][across]] = True
    flagged[rows] = np.take_along_axis(chosen, group, axis=1)
    return flagged


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
        for part in blocks(pairs.start, pairs.stop, EXACT_PAIRS):
            count = part.stop - part.start
            np.take(q, rows[part], axis=0, out=left[:count])
            np.take(g, cols[part], axis=0, out=right[:count])
            dots[part] = np.einsum("ij,ij->i", left[:count], right[:count], dtype=np.float64)

    with blas_workers() as run:
        run(functools.partial(compute, pairs) for pairs in blocks(0, rows.size, EXACT_TASK))
    q_norms = np.einsum("ij,ij->i", q, q, dtype=np.float64)
    g_norms = q_norms if g is q else np.einsum("ij,ij->i", g, g, dtype=np.float64)
    return np.maximum(q_norms[rows] + g_norms[cols] - 2 * dots, 0)
