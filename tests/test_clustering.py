import io
import json
import math

import numpy as np
import pytest
import torch

import metriclearning.clustering as clustering
from lib.kmeans import KMeansResult
from metriclearning.clustering import (
    SeedStream,
    acceptable,
    cluster_stats,
    cluster_with_retries,
    clusters_to_split,
    merge_degenerate,
    recluster,
    remove_unpaired,
    split_clusters,
)
from metriclearning.matching import match_to_previous

BACKENDS = ["faiss", "torch+sklearn"]


def make_blobs(n_blobs, classes_per_blob=3, per_class=3, dim=6, sub_blobs=1, seed=0):
    """Well-separated Gaussian blobs; each holds its own classes. With ``sub_blobs=2`` every blob is two
    tight halves (each with its own classes), so a 2-means on a blob has a known answer.

    Returns features (N, dim) float32, labels (N,), blob id (N,), sub-blob id (N,) (global ids).
    """
    rng = np.random.default_rng(seed)
    features, labels, blob, sub = [], [], [], []
    label = 0
    for b in range(n_blobs):
        center = np.zeros(dim)
        center[b % dim] = 100.0 * (1 + b // dim)
        for s in range(sub_blobs):
            offset = np.zeros(dim)
            offset[(b + 1) % dim] = 10.0 * s
            for _ in range(classes_per_blob):
                features.append(center + offset + 0.1 * rng.standard_normal((per_class, dim)))
                labels += [label] * per_class
                blob += [b] * per_class
                sub += [b * sub_blobs + s] * per_class
                label += 1
    return (np.concatenate(features).astype(np.float32), np.array(labels), np.array(blob), np.array(sub))


def same_partition(a, b):
    k = int(max(a.max(), b.max())) + 1
    return match_to_previous(a, b, k, k).cost_after == 0


# --- SeedStream -------------------------------------------------------------------------------------------


def test_seed_stream_without_crs_is_constant():
    stream = SeedStream(None)
    assert [stream.next_seed() for _ in range(4)] == [1234] * 4


def test_seed_stream_with_crs_follows_random_state():
    stream = SeedStream(42)
    reference = np.random.RandomState(42)
    expected = [int(reference.randint(0, 999999)) for _ in range(5)]
    got = [stream.next_seed() for _ in range(5)]
    assert got == expected
    assert all(0 <= s < 999999 for s in got)


@pytest.mark.parametrize("crs", [None, 7])
def test_seed_stream_state_round_trip(crs):
    stream = SeedStream(crs)
    stream.next_seed()
    stream.next_seed()
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)
    buffer.seek(0)
    restored = SeedStream(12345)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    via_json = SeedStream(None)
    via_json.load_state_dict(json.loads(json.dumps(stream.state_dict())))
    expected = [stream.next_seed() for _ in range(3)]
    assert [restored.next_seed() for _ in range(3)] == expected
    assert [via_json.next_seed() for _ in range(3)] == expected


# --- acceptance rule --------------------------------------------------------------------------------------


def test_acceptable_cases():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert acceptable(np.array([0, 0, 0, 0, 1, 1, 1, 1]), labels, 2)
    # cluster 1 holds classes 1 and 2 but class 1 has a single sample there
    assert not acceptable(np.array([0, 0, 0, 1, 1, 1, 0, 0]), labels, 2)
    # cluster 2 is empty
    assert not acceptable(np.array([0, 0, 0, 0, 1, 1, 1, 1]), labels, 3)
    # K = 1 passes whatever the content
    assert acceptable(np.zeros(3, dtype=int), np.array([5, 5, 5]), 1)
    # arbitrary label values; removed samples (-1) do not count
    assert acceptable(np.array([0, 0, 0, 0, -1]), np.array([10, 10, 70, 70, 3]), 1)
    assert not acceptable(np.array([0, 0, 0, -1, 1, 1, 1, 1]), labels, 2)


# --- flat k-means with retries ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_blobs_are_recovered(backend):
    features, labels, blob, _ = make_blobs(4)
    assignment, warnings = cluster_with_retries(features, labels, 4, seeds=SeedStream(3), backend=backend)
    assert warnings == []
    assert assignment.dtype == np.int64
    assert same_partition(assignment, blob)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_given_seed_stream(backend):
    features, labels, _, _ = make_blobs(3, dim=4, seed=1)
    features = features + np.random.default_rng(5).standard_normal(features.shape).astype(np.float32) * 80
    first, _ = cluster_with_retries(features, labels, 3, seeds=SeedStream(9), backend=backend, trials=2)
    second, _ = cluster_with_retries(features, labels, 3, seeds=SeedStream(9), backend=backend, trials=2)
    np.testing.assert_array_equal(first, second)


def test_retries_use_consecutive_seeds_and_stop_at_first_accepted(monkeypatch):
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    bad = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    good = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    calls = []

    def fake_kmeans(features, k, seed, backend, device=None, **kwargs):
        calls.append(seed)
        return KMeansResult(good if len(calls) == 3 else bad, np.zeros((k, 1), np.float32))

    monkeypatch.setattr(clustering, "kmeans", fake_kmeans)
    stream = SeedStream(None)
    assignment, warnings = cluster_with_retries(np.zeros((8, 1), np.float32), labels, 2, seeds=stream, backend="faiss")
    assert calls == [1234, 1235, 1236]
    np.testing.assert_array_equal(assignment, good)
    assert warnings == []


def test_all_trials_fail_uses_last_with_warning_and_one_draw():
    # two classes only: K = 4 can never be acceptable
    features, labels, _, _ = make_blobs(2, classes_per_blob=1, per_class=4)
    stream = SeedStream(11)
    reference = np.random.RandomState(11)
    assignment, warnings = cluster_with_retries(features, labels, 4, seeds=stream, backend="faiss", trials=3)
    assert assignment.shape == (8,) and assignment.min() >= 0 and assignment.max() < 4
    assert len(warnings) == 1 and "3 trial" in warnings[0]
    reference.randint(0, 999999)
    assert stream.next_seed() == reference.randint(0, 999999)  # exactly one draw per call


def test_more_clusters_than_samples_does_not_crash():
    features, labels, _, _ = make_blobs(2, classes_per_blob=1, per_class=2)
    assignment, warnings = cluster_with_retries(features, labels, 6, seeds=SeedStream(None), backend="faiss", trials=2)
    assert assignment.shape == (4,) and assignment.max() < 6
    assert warnings


def test_k1_draws_a_seed_without_running_kmeans(monkeypatch):
    monkeypatch.setattr(clustering, "kmeans", None)  # would fail if called
    stream = SeedStream(5)
    assignment, warnings = cluster_with_retries(
        np.ones((3, 2), np.float32), np.array([0, 0, 1]), 1, seeds=stream, backend="faiss"
    )
    np.testing.assert_array_equal(assignment, [0, 0, 0])
    reference = np.random.RandomState(5)
    reference.randint(0, 999999)
    assert stream.next_seed() == reference.randint(0, 999999)


def test_adaptive_centroids_start_from_previous_means(monkeypatch):
    features = np.array([[0.0], [2.0], [10.0], [30.0], [12.0], [5.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    previous = np.array([0, 0, 1, -1, 1, 0])  # sample 3 was removed: excluded from the means
    seen = {}

    def fake_kmeans(x, k, seed, backend, device=None, init_centroids=None, **kwargs):
        seen["init"], seen["seed"], seen["calls"] = init_centroids, seed, seen.get("calls", 0) + 1
        return KMeansResult(np.array([0, 0, 1, 1, 1, 0]), init_centroids)

    monkeypatch.setattr(clustering, "kmeans", fake_kmeans)
    assignment, _ = cluster_with_retries(
        features,
        labels,
        2,
        seeds=SeedStream(None),
        backend="faiss",
        previous=previous,
        method="kmeans_adaptive_centroids",
    )
    np.testing.assert_allclose(seen["init"], [[7 / 3], [11.0]])
    assert seen["calls"] == 1 and seen["seed"] == 1234
    np.testing.assert_array_equal(assignment, [0, 0, 1, 1, 1, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_centroids_runs_on_backends(backend):
    features, labels, blob, _ = make_blobs(3, seed=2)
    assignment, warnings = cluster_with_retries(
        features, labels, 3, seeds=SeedStream(None), backend=backend, previous=blob, method="kmeans_adaptive_centroids"
    )
    assert warnings == []
    np.testing.assert_array_equal(assignment, blob)  # starting at the blob means, ids follow previous


# --- which clusters split ---------------------------------------------------------------------------------


def test_clusters_to_split():
    assignment = np.repeat([0, 1, 2, 3], [5, 9, 9, 3])
    assert clusters_to_split(assignment, 4, 8).all()
    assert clusters_to_split(assignment, 4, 9).all()
    # K_final = 6 from 4: the two largest, tie between 1 and 2 (both 9) -> both
    np.testing.assert_array_equal(clusters_to_split(assignment, 4, 6), [False, True, True, False])
    # K_final = 5: one of the tied largest, the lower id
    np.testing.assert_array_equal(clusters_to_split(assignment, 4, 5), [False, True, False, False])
    assert not clusters_to_split(assignment, 4, 4).any()


# --- splits -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_all_gives_children_2c_and_2c_plus_1(backend):
    features, labels, blob, sub = make_blobs(3, classes_per_blob=2, per_class=2, sub_blobs=2)
    stream = SeedStream(None)
    new, parents, warnings = split_clusters(features, labels, blob, [True] * 3, seeds=stream, backend=backend)
    assert warnings == []
    assert parents == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(new // 2, blob)  # merging children back gives the parents
    assert same_partition(new, sub)  # each 2-means found the two sub-blobs


def test_partial_split_ids_and_merge_back():
    features, labels, blob, sub = make_blobs(4, classes_per_blob=2, per_class=2, sub_blobs=2, seed=3)
    to_split = [False, True, False, True]
    new, parents, _ = split_clusters(features, labels, blob, to_split, seeds=SeedStream(1), backend="faiss")
    assert parents == [0, 1, 1, 2, 3, 3]
    np.testing.assert_array_equal(np.array(parents)[new], blob)
    np.testing.assert_array_equal(new[blob == 0], 0)
    np.testing.assert_array_equal(new[blob == 2], 3)
    for child in (1, 2, 4, 5):  # every child of a split cluster is one sub-blob
        assert len(np.unique(sub[new == child])) == 1


def test_split_draws_one_seed_per_split_cluster_in_order(monkeypatch):
    features, labels, blob, _ = make_blobs(3, classes_per_blob=2, per_class=2, sub_blobs=2)
    labels[blob == 2] = 99  # cluster 2 becomes single-class: dealt, but still draws its seed
    seeds_used = []
    real_kmeans = clustering.kmeans

    def spy(x, k, seed, backend, device=None, **kwargs):
        seeds_used.append(seed)
        return real_kmeans(x, k, seed, backend, device=device, **kwargs)

    monkeypatch.setattr(clustering, "kmeans", spy)
    stream = SeedStream(21)
    reference = np.random.RandomState(21)
    split_clusters(features, labels, blob, [True, False, True], seeds=stream, backend="faiss")
    first = int(reference.randint(0, 999999))
    assert seeds_used == [first]  # cluster 0 by 2-means (accepted at once); cluster 2 dealt
    reference.randint(0, 999999)
    assert stream.next_seed() == reference.randint(0, 999999)


def test_split_fallbacks_deal_samples_or_classes():
    features = np.ones((10, 3), dtype=np.float32)  # all identical
    labels = np.array([5, 3, 5, 3, 7, 1, 1, 1, 1, 1])
    assignment = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    new, parents, warnings = split_clusters(
        features, labels, assignment, [True, True], seeds=SeedStream(None), backend="faiss"
    )
    assert parents == [0, 0, 1, 1]
    # cluster 0: classes dealt in ascending order 3 -> child 0, 5 -> child 1, 7 -> child 0
    np.testing.assert_array_equal(new[:5], [1, 0, 1, 0, 0])
    # cluster 1 is a single class: its samples are dealt alternately
    np.testing.assert_array_equal(new[5:], [2, 3, 2, 3, 2])
    assert len(warnings) == 2


def test_split_single_class_with_distinct_features_is_dealt():
    features = np.arange(8, dtype=np.float32).reshape(4, 2)
    new, _, warnings = split_clusters(
        features, np.zeros(4, int), np.zeros(4, int), [True], seeds=SeedStream(None), backend="faiss"
    )
    np.testing.assert_array_equal(new, [0, 1, 0, 1])
    assert "single class" in warnings[0]


def test_split_empty_cluster_and_removed_samples():
    features, labels, blob, sub = make_blobs(1, classes_per_blob=2, per_class=2, sub_blobs=2)
    assignment = blob.copy()
    assignment[0] = -1
    new, parents, warnings = split_clusters(
        features, labels, assignment, [True, True], seeds=SeedStream(None), backend="faiss", trials=2
    )
    assert parents == [0, 0, 1, 1]
    assert new[0] == -1
    assert not np.isin(new, [2, 3]).any()  # the empty cluster 1 has empty children
    assert any("empty" in w for w in warnings)


# --- removal, statistics, merges --------------------------------------------------------------------------


def test_remove_unpaired():
    assignment = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    labels = np.array([4, 4, 9, 4, 9, 9, 2, 2])
    after = remove_unpaired(assignment, labels)
    np.testing.assert_array_equal(after, [0, 0, -1, -1, 1, 1, -1, -1])


def test_cluster_stats_after_removal():
    before = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    labels = np.array([4, 4, 9, 4, 9, 9, 2, 2, 2, 3])
    after = remove_unpaired(before, labels)
    stats = cluster_stats(after, labels, before, 4)
    np.testing.assert_array_equal(stats["sizes"], [2, 2, 2, 0])
    np.testing.assert_array_equal(stats["n_classes"], [1, 1, 1, 0])
    np.testing.assert_array_equal(stats["n_removed"], [1, 2, 1, 0])
    assert all(v.dtype == np.int64 for v in stats.values())


def _merge_fixture():
    """Clusters 0 and 1 are healthy (2 classes x 2 samples, B = 4) with centroids at x = 0 and x = 10.
    Cluster 2 (one class) has its centroid at x = 7. Cluster 3 keeps two samples at x = 4 (nearer to 0),
    but its removed sample at x = 8 moves its centroid to 16/3 (nearer to 10)."""
    xs = [0, 0, 0, 0, 10, 10, 10, 10, 7, 7, 7, 7, 4, 4, 8]
    before = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 5, 5, 6])
    features = np.stack([np.array(xs, dtype=np.float32), np.zeros(len(xs), np.float32)], axis=1)
    return features, labels, before


def test_merge_into_nearest_healthy_centroid_including_removed_members():
    features, labels, before = _merge_fixture()
    after = remove_unpaired(before, labels)
    assert after[-1] == -1
    learner, merges, warnings = merge_degenerate(after, labels, features, 4, 4, before_removal=before)
    np.testing.assert_array_equal(merges, [[2, 1], [3, 1]])
    assert merges.dtype == np.int64
    np.testing.assert_array_equal(learner, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1])
    assert len(warnings) == 2


def test_merge_tie_goes_to_lower_id():
    features, labels, before = _merge_fixture()
    features[12:15, 0] = 5.0  # cluster 3's centroid exactly halfway between 0 and 10
    after = remove_unpaired(before, labels)
    _, merges, _ = merge_degenerate(after, labels, features, 4, 4, before_removal=before)
    np.testing.assert_array_equal(merges, [[2, 1], [3, 0]])


def test_all_degenerate_merge_into_largest_and_empty_clusters_ignored():
    features, labels, before = _merge_fixture()
    after = remove_unpaired(before, labels)
    # B = 5: every cluster is degenerate; sizes after removal are 4, 4, 4, 2 -> the largest is 0 (tie)
    learner, merges, warnings = merge_degenerate(after, labels, features, 5, 5, before_removal=before)
    np.testing.assert_array_equal(merges, [[1, 0], [2, 0], [3, 0]])  # cluster 4 is empty: not merged
    np.testing.assert_array_equal(learner[:-1], 0)
    assert learner[-1] == -1
    assert any("every cluster" in w for w in warnings)


def test_no_degenerate_clusters_no_merges():
    features, labels, before = _merge_fixture()
    after = remove_unpaired(before, labels)
    learner, merges, warnings = merge_degenerate(after[:8], labels[:8], features[:8], 2, 4, before_removal=before[:8])
    assert merges.shape == (0, 2) and warnings == []
    np.testing.assert_array_equal(learner, after[:8])


# --- the whole procedure ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_recluster_initial_then_matched_then_split(backend):
    features, labels, blob, sub = make_blobs(2, classes_per_blob=2, per_class=3, sub_blobs=2, seed=4)
    stream = SeedStream(8)
    first = recluster(
        features, labels, k=2, k_final=4, previous=None, split=False, seeds=stream, backend=backend, batch_size=4
    )
    assert first.k == 2 and first.assignment.dtype == np.int32
    np.testing.assert_array_equal(first.permutation, [0, 1])
    assert math.isnan(first.nmi_prev) and first.merges.shape == (0, 2)
    assert same_partition(first.assignment, blob)
    np.testing.assert_array_equal(first.sizes, [12, 12])

    swapped = 1 - first.assignment.astype(np.int64)  # pretend the last round had the other ids
    second = recluster(
        features, labels, k=2, k_final=4, previous=swapped, split=True, seeds=stream, backend=backend, batch_size=4
    )
    assert second.cost_after == 0 and math.isclose(second.nmi_prev, 1.0)
    np.testing.assert_array_equal(second.split, [True, True])
    np.testing.assert_array_equal(second.parent_of_new, [0, 0, 1, 1])
    np.testing.assert_array_equal(second.assignment // 2, swapped)
    assert same_partition(second.assignment, sub)
    np.testing.assert_array_equal(second.sizes, [6, 6, 6, 6])
    np.testing.assert_array_equal(second.n_classes, [2, 2, 2, 2])
    np.testing.assert_array_equal(second.n_removed, [0, 0, 0, 0])


def test_recluster_is_deterministic_and_never_crashes_on_bad_shapes():
    # 3 classes, K = 3 clusters, B larger than any cluster: every cluster is degenerate.
    features, labels, _, _ = make_blobs(3, classes_per_blob=1, per_class=3, seed=6)
    runs = [
        recluster(
            features,
            labels,
            k=3,
            k_final=3,
            previous=None,
            split=False,
            seeds=SeedStream(2),
            backend="faiss",
            batch_size=50,
            trials=2,
        )
        for _ in range(2)
    ]
    for name in ("assignment", "learner_of_sample", "merges", "sizes"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name))
    assert runs[0].warnings and len(runs[0].merges) == 2
    assert len(np.unique(runs[0].learner_of_sample[runs[0].learner_of_sample >= 0])) == 1
