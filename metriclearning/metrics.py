"""Retrieval metrics as pure functions of neighbour labels (METHOD.md §8.2).

The evaluator finds the neighbours once and passes each metric their labels, so every metric here is cheap,
vectorised over queries and never sees an N x N matrix. NMI clusters the embeddings themselves.
"""

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from lib.kmeans import kmeans

NMI_ITERATIONS = 100
_AP_ROWS = 8192  # queries per step of the MAP@R computation: bounds its (rows, R) temporaries


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``{"R@k": fraction of queries with a same-label item among their first k neighbours}``; all queries count."""
    neighbour_labels, query_labels = _check(neighbour_labels, query_labels)
    if max(ks, default=0) > neighbour_labels.shape[1]:
        raise ValueError(f"R@{max(ks)} needs {max(ks)} neighbours, got {neighbour_labels.shape[1]}")
    hits = neighbour_labels == query_labels[:, None]
    first_hit = np.where(hits.any(1), hits.argmax(1), neighbour_labels.shape[1])
    return {f"R@{k}": float(np.mean(first_hit < k)) for k in ks}


def map_at_r(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, r_per_query: np.ndarray
) -> tuple[float, float, int, int]:
    """(MAP@R, mARP, n_queries, n_queries_R0) with R_q = ``r_per_query`` relevant gallery items per query.

    With h_i = 1 if neighbour i is relevant and P@i the precision at i, both sum h_i * P@i over the first R_q
    neighbours. MAP@R divides by R_q and averages over the queries with R_q >= 1 (0.0 if there are none);
    mARP, the original implementation's variant, divides by the hits within the first R_q (0 if none) and
    averages over all queries, counting R_q = 0 as 0.
    """
    neighbour_labels, query_labels = _check(neighbour_labels, query_labels)
    r_per_query = np.asarray(r_per_query, dtype=np.int64)
    if r_per_query.shape != query_labels.shape or (r_per_query < 0).any():
        raise ValueError("r_per_query must hold one non-negative count per query")
    r_max = int(r_per_query.max(initial=0))
    if r_max > neighbour_labels.shape[1]:
        raise ValueError(f"MAP@R needs R = {r_max} neighbours, got {neighbour_labels.shape[1]}")
    precision_sums = np.zeros(len(query_labels))
    hit_counts = np.zeros(len(query_labels))
    ranks = np.arange(1, r_max + 1)
    for start in range(0, len(query_labels), _AP_ROWS):
        rows = slice(start, start + _AP_ROWS)
        within = ranks[None, :] <= r_per_query[rows, None]
        hits = (neighbour_labels[rows, :r_max] == query_labels[rows, None]) & within
        cumulative = np.cumsum(hits, axis=1)
        precision_sums[rows] = (hits * cumulative / ranks).sum(1)
        hit_counts[rows] = cumulative[:, -1] if r_max else 0
    has_relevant = r_per_query > 0
    map_r = float(np.mean(precision_sums[has_relevant] / r_per_query[has_relevant])) if has_relevant.any() else 0.0
    marp = float(
        np.mean(np.divide(precision_sums, hit_counts, out=np.zeros_like(precision_sums), where=hit_counts > 0))
    )
    return map_r, marp, len(query_labels), int((~has_relevant).sum())


def nmi(
    features: np.ndarray, labels: np.ndarray, *, n_runs: int = 1, backend: str = "faiss", device=None
) -> tuple[float, float]:
    """Mean and population std over seeds 0..n_runs-1 of NMI(labels, k-means clusters), k = number of classes.

    Arithmetic-mean normalisation; 100 k-means iterations. scikit-learn's k-means is not used for NMI even
    with ``torch+sklearn`` (METHOD.md §8.6), so only "faiss-gpu" leaves the faiss CPU default.
    """
    labels = np.asarray(labels)
    if n_runs < 1:
        raise ValueError(f"n_runs must be >= 1, got {n_runs}")
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    n_classes = len(np.unique(labels))
    on_gpu = backend == "faiss-gpu"
    gpu = (device if isinstance(device, int) else torch.device(device or "cuda").index or 0) if on_gpu else None
    scores = []
    for seed in range(n_runs):
        clusters = kmeans(
            features, n_classes, seed, backend=backend if on_gpu else "faiss", niter=NMI_ITERATIONS, device=gpu
        ).assignment
        scores.append(normalized_mutual_info_score(labels, clusters, average_method="arithmetic"))
    return float(np.mean(scores)), float(np.std(scores))


def _check(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    neighbour_labels, query_labels = np.asarray(neighbour_labels), np.asarray(query_labels)
    if neighbour_labels.ndim != 2 or query_labels.shape != (neighbour_labels.shape[0],):
        raise ValueError(
            f"need neighbour labels (Q, k) and query labels (Q,), got {neighbour_labels.shape} and {query_labels.shape}"
        )
    return neighbour_labels, query_labels
