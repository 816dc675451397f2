import numpy as np
import pytest

from dataset.cluster_sampler import ClusterBatchPlanner
from dataset.samplers import build_batch_sampler
from lib.errors import CheckpointError
from lib.seeding import numpy_generator


def planner(learners, labels, *, name="balanced_old", batch_size=4, seed=0, recluster_index=0, **kwargs):
    return ClusterBatchPlanner(
        np.asarray(learners),
        np.asarray(labels),
        sampler_name=name,
        batch_size=batch_size,
        samples_per_class=kwargs.pop("samples_per_class", 2),
        num_replicas=kwargs.pop("num_replicas", 1),
        small_class_action=kwargs.pop("small_class_action", "sample_other"),
        seed=seed,
        recluster_index=recluster_index,
    )


def clusters(sizes, classes_per_cluster=2):
    """Learner c holds sizes[c] samples in `classes_per_cluster` classes of its own; indices interleaved."""
    learners = np.repeat(np.arange(len(sizes)), sizes)
    labels = np.concatenate([c * classes_per_cluster + np.arange(n) % classes_per_cluster for c, n in enumerate(sizes)])
    order = np.random.default_rng(123).permutation(len(learners))
    return learners[order], labels[order]


def same_plans(a, b):
    return len(a) == len(b) and all(
        x.learner_id == y.learner_id and np.array_equal(x.indices, y.indices) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("name", ["balanced_old", "adaptbalanced", "randombatch", "npairs"])
def test_epoch_is_k_times_max_rounds_in_round_robin_order(name):
    learners, labels = clusters([9, 17, 4, 12])  # max floor(N_c / 4) = 4
    plan = planner(learners, labels, name=name).plan_epoch(0)
    assert len(plan) == 4 * 4
    assert [b.learner_id for b in plan] == [0, 1, 2, 3] * 4
    for batch in plan:
        assert batch.indices.dtype == np.int64
        assert np.all(learners[batch.indices] == batch.learner_id)


def test_small_clusters_start_new_passes_and_excluded_samples_never_appear():
    learners, labels = clusters([4, 16])
    learners[np.flatnonzero(learners == 1)[:2]] = -1  # removed samples of cluster 1: 14 left
    excluded = set(np.flatnonzero(learners == -1).tolist())
    p = planner(learners, labels)
    plan = p.plan_epoch(0)
    assert len(plan) == 2 * 3
    small = [b.indices for b in plan if b.learner_id == 0]
    assert len(small) == 3  # a pass of cluster 0 holds one batch: three passes in this epoch
    assert all(sorted(b.tolist()) == sorted(np.flatnonzero(learners == 0).tolist()) for b in small)
    assert not excluded & set(np.concatenate([b.indices for b in plan]).tolist())
    assert p.sizes == {0: 4, 1: 14}


def test_merged_learners_are_skipped_and_absorbed_samples_train_under_the_absorbing_id():
    learners, labels = clusters([8, 8, 8])
    learners[learners == 1] = 2  # cluster 1 merged into 2 for this round
    p = planner(learners, labels)
    plan = p.plan_epoch(0)
    assert p.learner_ids == (0, 2)
    assert [b.learner_id for b in plan] == [0, 2] * 4  # T = floor(16 / 4)


def test_each_learner_samples_with_its_own_derived_generator():
    learners, labels = clusters([8, 12, 8])
    plan = planner(learners, labels, seed=7, recluster_index=3).plan_epoch(0)
    members = np.flatnonzero(learners == 1)
    reference = build_batch_sampler(
        "balanced_old",
        labels[members],
        batch_size=4,
        samples_per_class=2,
        rng=numpy_generator(7, "batch-sampler", 3, 1),
    )
    expected = [members[positions] for positions in reference.new_pass()]
    found = [b.indices for b in plan if b.learner_id == 1]
    assert all(np.array_equal(a, b) for a, b in zip(expected, found, strict=True))


def test_same_seed_same_plans_other_seed_other_plans():
    learners, labels = clusters([12, 20, 9])
    a, b, c = (planner(learners, labels, seed=s) for s in (1, 1, 2))
    plans_a = [a.plan_epoch(e) for e in range(3)]
    assert all(same_plans(x, b.plan_epoch(e)) for e, x in enumerate(plans_a))
    assert not same_plans(plans_a[0], c.plan_epoch(0))
    assert not same_plans(plans_a[0], plans_a[1])  # samplers live on across epochs


@pytest.mark.parametrize("name", ["adaptbalanced", "randombatch"])
def test_state_round_trips_at_epoch_ends_and_rebuilds_the_interrupted_epoch(name):
    learners, labels = clusters([12, 20, 9], classes_per_cluster=3)
    kwargs = {"name": name, "num_replicas": 2, "batch_size": 4}
    original = planner(learners, labels, **kwargs)
    original.plan_epoch(0)
    end_of_0 = original.state_dict()
    plan_1 = original.plan_epoch(1)
    plan_2 = original.plan_epoch(2)

    resumed = planner(learners, labels, **kwargs)
    resumed.load_state_dict(end_of_0)
    assert same_plans(resumed.plan_epoch(1), plan_1)

    interrupted = planner(learners, labels, **kwargs)
    interrupted.load_state_dict(end_of_0)
    interrupted.plan_epoch(1)
    mid_epoch = interrupted.epoch_start_state_dict()
    assert mid_epoch["epoch"] == 1
    rebuilt = planner(learners, labels, **kwargs)
    rebuilt.load_state_dict(mid_epoch)
    assert same_plans(rebuilt.plan_epoch(1), plan_1)
    assert same_plans(rebuilt.plan_epoch(2), plan_2)


def test_state_of_other_clusters_is_a_checkpoint_error():
    learners, labels = clusters([8, 8])
    state = planner(learners, labels).state_dict()
    other_learners, other_labels = clusters([8, 12])
    with pytest.raises(CheckpointError, match="learners"):
        planner(other_learners, other_labels).load_state_dict(state)


def test_learners_all_below_the_batch_size_plan_no_batch_without_crashing():
    """T = max_c floor(N_c / B) = 0 (METHOD §3.6), even where a sampler alone would yield a short batch."""
    learners, labels = clusters([3, 2], classes_per_cluster=1)  # every cluster below B, single classes
    assert planner(learners, labels).plan_epoch(0) == []
    assert planner([0, 1, -1], [0, 0, 1]).plan_epoch(0) == []
    assert planner([-1, -1], [0, 1]).plan_epoch(0) == []


def test_64_clusters_plan_every_learner_in_turn():
    learners, labels = clusters([8] * 63 + [16])
    plan = planner(learners, labels, name="adaptbalanced").plan_epoch(0)
    assert len(plan) == 64 * 4
    assert [b.learner_id for b in plan] == list(range(64)) * 4
