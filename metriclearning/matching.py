"""Hungarian matching of a new partition to the previous one, so learner k keeps seeing the same data.

METHOD.md §3.4 step 3 and §10 #1: each new cluster takes the id of the previous cluster it overlaps most,
under a one-to-one constraint. The original applied the inverse permutation, which is wrong for cycles of
length >= 3; here the optimal assignment is applied directly.
"""

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score


@dataclass(frozen=True)
class MatchResult:
    assignment: np.ndarray  # int64 (N,): the new partition relabelled with the matched ids
    permutation: np.ndarray  # int64 (k_new,): matched id given to each pre-matching cluster
    cost_before: float  # total symmetric-difference cost with the identity labelling
    cost_after: float  # total cost of the optimal matching
    nmi_prev: float  # NMI(previous, new); previously removed samples count as their own label


def matching_cost(new: np.ndarray, previous: np.ndarray, k_new: int, k_prev: int) -> np.ndarray:
    """cost[i, j] = |A_i| + |B_j| - 2|A_i ∩ B_j| (float64, k_new x max(k_new, k_prev)).

    Samples with ``previous == -1`` belong to no B_j. Columns j >= k_prev stand for empty previous clusters,
    so that every new cluster can get an id when K grows.
    """
    n_cols = max(k_new, k_prev)
    new = np.asarray(new, dtype=np.int64)
    previous = np.asarray(previous, dtype=np.int64)
    kept = previous >= 0
    sizes_new = np.bincount(new, minlength=k_new)[:k_new]
    sizes_prev = np.bincount(previous[kept], minlength=n_cols)[:n_cols]
    overlap = np.bincount(new[kept] * n_cols + previous[kept], minlength=k_new * n_cols)
    overlap = overlap[: k_new * n_cols].reshape(k_new, n_cols)
    return (sizes_new[:, None] + sizes_prev[None, :] - 2 * overlap).astype(np.float64)


def match_to_previous(new: np.ndarray, previous: np.ndarray, k_new: int, k_prev: int) -> MatchResult:
    """Relabel ``new`` (ids 0..k_new-1) to minimise the total symmetric difference with ``previous``.

    If K shrank (k_new < k_prev), the matched previous ids are renumbered by rank so that they stay in
    0..k_new-1; the costs are those of the optimal matching itself.
    """
    new = np.asarray(new, dtype=np.int64)
    previous = np.asarray(previous, dtype=np.int64)
    if new.shape != previous.shape:
        raise ValueError(f"new and previous assignments differ in length: {new.shape} vs {previous.shape}")
    cost = matching_cost(new, previous, k_new, k_prev)
    rows, cols = linear_sum_assignment(cost)
    permutation = np.empty(k_new, dtype=np.int64)
    permutation[rows] = cols
    cost_after = float(cost[rows, cols].sum())
    cost_before = float(np.trace(cost))
    if k_new < k_prev:
        permutation = np.argsort(np.argsort(permutation, kind="stable"), kind="stable").astype(np.int64)
    assignment = permutation[new]
    nmi = float(normalized_mutual_info_score(previous, assignment))
    return MatchResult(assignment, permutation, cost_before, cost_after, nmi)
