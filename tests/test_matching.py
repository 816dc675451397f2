import itertools
import math

import numpy as np
import pytest

from metriclearning.matching import match_to_previous, matching_cost


def _naive_cost(new, previous, k_new, k_prev):
    """cost[i][j] = |A_i symmetric-difference B_j| by set operations."""
    cols = max(k_new, k_prev)
    sets_new = [{s for s, c in enumerate(new) if c == i} for i in range(k_new)]
    sets_prev = [{s for s, c in enumerate(previous) if c == j} for j in range(cols)]
    return np.array([[len(a ^ b) for b in sets_prev] for a in sets_new], dtype=float)


@pytest.mark.parametrize(
    "perm",
    [
        [1, 2, 0, 3, 4, 5, 6, 7],  # a 3-cycle: the case the original got wrong
        [1, 2, 3, 4, 5, 6, 7, 0],  # an 8-cycle
        [2, 0, 1, 5, 3, 4, 7, 6],  # two 3-cycles and a swap
        list(range(8)),
    ],
)
def test_permuted_partition_gets_old_ids_back(perm):
    rng = np.random.default_rng(0)
    old = rng.integers(0, 8, 200)
    old[:8] = np.arange(8)  # every cluster non-empty
    perm = np.array(perm)
    new = perm[old]  # same partition, ids permuted
    result = match_to_previous(new, old, 8, 8)
    np.testing.assert_array_equal(result.assignment, old)
    assert result.cost_after == 0
    assert math.isclose(result.nmi_prev, 1.0)
    # new cluster i (= old cluster perm^-1(i)) must receive old id perm^-1(i)
    np.testing.assert_array_equal(result.permutation, np.argsort(perm))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [3, 4])
def test_matching_is_optimal_against_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    previous = rng.integers(-1, k, 40)  # -1: removed last round
    new = rng.integers(0, k, 40)
    cost = _naive_cost(new, previous, k, k)
    np.testing.assert_array_equal(matching_cost(new, previous, k, k), cost)
    best = min(sum(cost[i, p[i]] for i in range(k)) for p in itertools.permutations(range(k)))
    result = match_to_previous(new, previous, k, k)
    assert sorted(result.permutation.tolist()) == list(range(k))
    assert result.cost_after == best
    assert sum(cost[i, result.permutation[i]] for i in range(k)) == best
    assert result.cost_before == sum(cost[i, i] for i in range(k))
    np.testing.assert_array_equal(result.assignment, result.permutation[new])


def test_hand_example_with_removed_samples():
    previous = np.array([0, 0, 1, 1, -1, -1])
    new = np.array([1, 1, 0, 0, 2, 2])
    # A_0={2,3}, A_1={0,1}, A_2={4,5}; B_0={0,1}, B_1={2,3}, B_2={} (column for an empty cluster).
    expected_cost = np.array([[4, 0, 2], [0, 4, 2], [4, 4, 2]], dtype=float)
    np.testing.assert_array_equal(matching_cost(new, previous, 3, 2), expected_cost)
    result = match_to_previous(new, previous, 3, 2)
    np.testing.assert_array_equal(result.permutation, [1, 0, 2])
    np.testing.assert_array_equal(result.assignment, [0, 0, 1, 1, 2, 2])
    assert result.cost_before == 4 + 4 + 2
    assert result.cost_after == 0 + 0 + 2
    # The removed samples form their own label, so the two partitions are identical: NMI 1.
    assert math.isclose(result.nmi_prev, 1.0)


def test_nmi_of_independent_partitions_is_zero():
    previous = np.array([0, 0, 1, 1])
    new = np.array([0, 1, 0, 1])
    assert abs(match_to_previous(new, previous, 2, 2).nmi_prev) < 1e-12


def test_nmi_hand_computed():
    # previous {0,1,2 | 3}, new {0,1 | 2,3}: H(P)=H(1/4), H(N)=ln 2, I = H(N) - H(N|P) with
    # H(N|P) = 3/4 * H(2/3,1/3). Arithmetic normalisation: 2I / (H(P)+H(N)).
    def entropy(*p):
        return -sum(x * math.log(x) for x in p)

    mutual = entropy(0.5, 0.5) - 0.75 * entropy(2 / 3, 1 / 3)
    expected = 2 * mutual / (entropy(0.75, 0.25) + entropy(0.5, 0.5))
    result = match_to_previous(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), 2, 2)
    assert math.isclose(result.nmi_prev, expected, rel_tol=1e-9)


def test_more_new_clusters_than_previous():
    previous = np.array([0, 0, 0, 1, 1, 1])
    new = np.array([2, 2, 1, 0, 0, 0])
    result = match_to_previous(new, previous, 3, 2)
    # new 0 -> old 1, new 2 -> old 0 (overlap 2), new 1 takes the free id 2
    np.testing.assert_array_equal(result.permutation, [1, 2, 0])
    np.testing.assert_array_equal(result.assignment, [0, 0, 2, 1, 1, 1])


def test_fewer_new_clusters_than_previous_keeps_ids_in_range():
    previous = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    new = np.array([1, 1, 1, 1, 0, 0, 0, 0])  # new 0 = old {2,3}, new 1 = old {0,1}
    result = match_to_previous(new, previous, 2, 4)
    assert sorted(result.permutation.tolist()) == [0, 1]
    # new 1 matched an old id below the one new 0 matched, so it keeps the lower rank
    np.testing.assert_array_equal(result.permutation, [1, 0])
    assert result.assignment.max() == 1
    assert result.cost_after == 2 + 2


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match="length"):
        match_to_previous(np.zeros(3, dtype=int), np.zeros(4, dtype=int), 1, 1)
