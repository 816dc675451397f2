"""Metrics on hand-computed cases and against naive per-query loops."""

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

import metriclearning.metrics as metrics
from lib.kmeans import KMeansResult
from metriclearning.metrics import map_at_r, nmi, recall_at_k


def test_recall_hand_case():
    neighbours = np.array([[1, 0, 0], [2, 2, 1], [0, 0, 0], [3, 3, 3]])
    queries = np.array([1, 1, 1, 3])
    # first hit at rank 1, 3, never, 1
    assert recall_at_k(neighbours, queries, [1, 2, 3]) == {"R@1": 0.5, "R@2": 0.5, "R@3": 0.75}


def test_recall_needs_enough_neighbours():
    with pytest.raises(ValueError, match="R@4"):
        recall_at_k(np.zeros((2, 3)), np.zeros(2), [4])


def test_map_at_r_and_marp_differ_as_documented():
    """[hit, miss, miss, miss] with R = 4: MAP@R = 1/4 (divided by R), mARP = 1 (divided by the hits)."""
    assert map_at_r(np.array([[7, 0, 0, 0]]), np.array([7]), np.array([4])) == (0.25, 1.0, 1, 0)


def test_map_hand_case_with_hits_beyond_r_and_a_query_without_relevant_items():
    neighbours = np.array([[0, 1, 1, 1], [2, 2, 2, 2]])
    queries = np.array([1, 5])
    r = np.array([3, 0])
    # query 0: within R = 3, hits at ranks 2 and 3 (the hit at rank 4 is beyond R): sum of P@i = 1/2 + 2/3
    map_r, marp, n_queries, n_r0 = map_at_r(neighbours, queries, r)
    assert map_r == pytest.approx((1 / 2 + 2 / 3) / 3)  # only the query with R >= 1 counts
    assert marp == pytest.approx(((1 / 2 + 2 / 3) / 2 + 0) / 2)  # every query counts, R = 0 as 0
    assert (n_queries, n_r0) == (2, 1)


def test_map_with_no_hits_in_top_r_is_zero_for_both():
    assert map_at_r(np.array([[0, 0, 1]]), np.array([1]), np.array([2]))[:2] == (0.0, 0.0)


def naive_average_precisions(neighbours, queries, r):
    standard, original = [], []
    for row, label, r_q in zip(neighbours, queries, r, strict=True):
        hits, precision_sum = 0, 0.0
        for i in range(r_q):
            if row[i] == label:
                hits += 1
                precision_sum += hits / (i + 1)
        if r_q:
            standard.append(precision_sum / r_q)
        original.append(precision_sum / hits if hits else 0.0)
    return np.mean(standard), np.mean(original)


def test_map_matches_naive_loops_across_row_chunks(monkeypatch):
    monkeypatch.setattr(metrics, "_AP_ROWS", 7)
    rng = np.random.default_rng(0)
    neighbours = rng.integers(0, 4, (50, 12))
    queries = rng.integers(0, 4, 50)
    r = rng.integers(0, 13, 50)
    map_r, marp, n_queries, n_r0 = map_at_r(neighbours, queries, r)
    expected_map, expected_marp = naive_average_precisions(neighbours, queries, r)
    assert map_r == pytest.approx(expected_map) and marp == pytest.approx(expected_marp)
    assert (n_queries, n_r0) == (50, int((r == 0).sum()))
    assert marp >= map_r


def test_map_rejects_r_beyond_the_neighbours():
    with pytest.raises(ValueError, match="R = 5"):
        map_at_r(np.zeros((1, 4)), np.zeros(1), np.array([5]))


def test_nmi_of_separated_clusters_is_one():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 10)
    features = (np.eye(4)[labels] * 10 + 0.01 * rng.standard_normal((40, 4))).astype(np.float32)
    assert nmi(features, labels, n_runs=2) == pytest.approx((1.0, 0.0))


def test_nmi_runs_kmeans_once_per_seed_and_reports_population_std(monkeypatch):
    labels = np.array([0, 0, 1, 1, 2, 2])
    partitions = {0: np.array([0, 0, 1, 1, 2, 2]), 1: np.array([0, 0, 0, 0, 0, 1])}  # entropies differ in run 1
    calls = []

    def fake_kmeans(features, k, seed, backend, niter, device):
        calls.append((k, seed, backend, niter))
        return KMeansResult(partitions[seed], np.zeros((k, 2), dtype=np.float32))

    monkeypatch.setattr(metrics, "kmeans", fake_kmeans)
    mean, std = nmi(np.zeros((6, 2), dtype=np.float32), labels, n_runs=2, backend="torch+sklearn")
    scores = [normalized_mutual_info_score(labels, partitions[s], average_method="arithmetic") for s in (0, 1)]
    assert calls == [(3, 0, "faiss", 100), (3, 1, "faiss", 100)]
    assert mean == pytest.approx(np.mean(scores)) and std == pytest.approx(np.std(scores))
    assert scores[0] == 1.0 and std > 0
    geometric = normalized_mutual_info_score(labels, partitions[1], average_method="geometric")
    assert abs(geometric - scores[1]) > 0.01  # so the mean above tells the arithmetic NMI (the seed's) apart
