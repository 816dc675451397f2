import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from dataset.samplers import _ClassLists, build_batch_sampler
from lib.errors import ConfigError

NAMES = ("balanced_old", "adaptbalanced", "randombatch", "npairs")


def make(name, labels, seed=0, **kwargs):
    kwargs.setdefault("batch_size", 8)
    kwargs.setdefault("samples_per_class", 2)
    return build_batch_sampler(name, np.asarray(labels), rng=np.random.default_rng(seed), **kwargs)


def blocks(n_classes, per_class):
    return np.repeat(np.arange(n_classes), per_class)


def passes(sampler, n):
    return [list(sampler.new_pass()) for _ in range(n)]


def class_counts(labels, batch):
    return sorted(Counter(labels[batch].tolist()).values())


# ---- the "taking t samples of class y" rule ---------------------------------------------------------


def test_take_reads_the_shuffled_list_then_reshuffles_when_the_cursor_reaches_the_size():
    lists = _ClassLists(np.zeros(4, dtype=np.int64), np.random.default_rng(0))
    first = lists.lists.copy()
    a, b = lists.take([0], [2]), lists.take([0], [2])
    assert np.array_equal(np.concatenate([a, b]), first)  # one full read of the shuffled list
    assert lists.cursors[0] == 0
    assert sorted(lists.lists.tolist()) == [0, 1, 2, 3]


def test_take_draws_randomly_when_fewer_than_t_unread_remain():
    lists = _ClassLists(np.zeros(5, dtype=np.int64), np.random.default_rng(1))
    lists.take([0], [2])
    lists.take([0], [2])
    tail = lists.take([0], [2])  # one unread left: 2 random distinct members, cursor passes the size
    assert len(set(tail.tolist())) == 2 and set(tail.tolist()) <= set(range(5))
    assert lists.cursors[0] == 0


def test_take_with_replacement_only_for_a_class_smaller_than_t():
    lists = _ClassLists(np.array([0, 0, 1, 1, 1]), np.random.default_rng(2))
    many = lists.take([0], [7])
    assert len(many) == 7 and set(many.tolist()) <= {0, 1}
    assert lists.cursors[0] == 0


def test_vectorised_take_matches_the_rule_class_by_class():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(6), [5, 1, 4, 7, 2, 3])
    lists = _ClassLists(labels, rng)
    lists.cursors[:] = [3, 0, 2, 0, 1, 0]
    before_lists, before_cursors = lists.lists.copy(), lists.cursors.copy()
    classes, counts = np.array([0, 1, 2, 3, 4, 5]), np.array([2, 3, 2, 2, 2, 3])
    out = lists.take(classes, counts)
    pos = 0
    for c, t in zip(classes, counts, strict=True):
        members = np.flatnonzero(labels == c)
        offset, size, cursor = members[0], len(members), before_cursors[c]
        part = out[pos : pos + t]
        pos += t
        assert set(part.tolist()) <= set(members.tolist())
        if size - cursor >= t:
            assert np.array_equal(part, before_lists[offset + cursor : offset + cursor + t])
        elif size >= t:
            assert len(set(part.tolist())) == t
        new_cursor = 0 if cursor + t >= size else cursor + t
        assert lists.cursors[c] == new_cursor
        segment = lists.lists[offset : offset + size]
        assert sorted(segment.tolist()) == members.tolist()
        if new_cursor:
            assert np.array_equal(segment, before_lists[offset : offset + size])
    assert pos == len(out)


# ---- balanced_old -----------------------------------------------------------------------------------


def test_balanced_old_batches_hold_b_over_s_distinct_classes_of_s_each():
    labels = blocks(6, 10)
    (batches,) = passes(make("balanced_old", labels), 1)
    assert len(batches) == 60 // 8
    for batch in batches:
        assert batch.dtype == np.int64 and len(batch) == 8
        assert class_counts(labels, batch) == [2, 2, 2, 2]
        assert len(set(batch.tolist())) == 8


def test_balanced_old_draws_classes_with_replacement_when_the_cluster_has_too_few():
    labels = blocks(2, 10)
    for batch in itertools.chain(*passes(make("balanced_old", labels), 3)):
        assert len(batch) == 8
        assert all(count % 2 == 0 for count in class_counts(labels, batch))


def test_balanced_old_reads_every_sample_of_a_class_before_repeating_it():
    labels = blocks(4, 6)  # C_b = 4 = every class in every batch: 3 batches read each class once
    sampler = make("balanced_old", labels)
    (batches,) = passes(sampler, 1)
    assert len(batches) == 3
    assert sorted(np.concatenate(batches).tolist()) == list(range(24))


# ---- adaptbalanced ----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["sample_other", "smaller_batch", "duplicate"])
def test_adaptbalanced_with_large_classes_is_the_same_for_every_action(action):
    labels = blocks(6, 10)
    reference = passes(make("adaptbalanced", labels, seed=5), 2)
    batches = passes(make("adaptbalanced", labels, seed=5, small_class_action=action), 2)
    assert all(np.array_equal(a, b) for a, b in zip(sum(reference, []), sum(batches, []), strict=True))
    assert len(batches[0]) == 7  # count + 8 <= 60
    for batch in batches[0]:
        assert class_counts(labels, batch) == [2, 2, 2, 2] and len(set(batch.tolist())) == 8


def test_adaptbalanced_sample_other_fills_short_batches_with_other_positions():
    labels = np.repeat(np.arange(4), [10, 10, 1, 1])
    (batches,) = passes(make("adaptbalanced", labels, small_class_action="sample_other"), 1)
    assert len(batches) == 2  # count 0 -> 8 -> 16; 16 + 8 > 22
    for batch in batches:
        assert len(batch) == 8 and len(set(batch.tolist())) == 8
        assert {2, 3} <= set(labels[batch].tolist())


def test_adaptbalanced_smaller_batch_keeps_short_batches_and_counts_what_it_took():
    labels = np.repeat(np.arange(4), [10, 10, 1, 1])
    (batches,) = passes(make("adaptbalanced", labels, small_class_action="smaller_batch"), 1)
    assert len(batches) == 3  # count 0 -> 6 -> 12 -> 18; 18 + 8 > 22
    for batch in batches:
        assert class_counts(labels, batch) == [1, 1, 2, 2]


def test_adaptbalanced_duplicate_repeats_members_of_small_classes():
    labels = np.repeat(np.arange(4), [10, 10, 1, 1])
    (batches,) = passes(make("adaptbalanced", labels, small_class_action="duplicate"), 1)
    assert len(batches) == 2
    for batch in batches:
        assert class_counts(labels, batch) == [2, 2, 2, 2]
        assert Counter(batch.tolist())[20] == 2 and Counter(batch.tolist())[21] == 2


@pytest.mark.parametrize("action", ["sample_other", "smaller_batch", "duplicate"])
def test_adaptbalanced_with_too_few_classes_spreads_the_extra_samples(action):
    labels = blocks(3, 10)  # C_b = 4 > 3 classes: S' = 8 // 3 = 2, extra = 2
    (batches,) = passes(make("adaptbalanced", labels, small_class_action=action), 1)
    assert len(batches) == 3
    for batch in batches:
        assert class_counts(labels, batch) == [2, 3, 3]


def test_adaptbalanced_tiles_replicas():
    labels = blocks(6, 10)
    (batches,) = passes(make("adaptbalanced", labels, num_replicas=2), 1)
    assert len(batches) == 15  # B' = 4: count + 4 <= 60
    for batch in batches:
        assert len(batch) == 8 and np.array_equal(batch[:4], batch[4:])
        assert class_counts(labels, batch[:4]) == [2, 2]


# ---- randombatch ------------------------------------------------------------------------------------


def test_randombatch_uses_every_chunk_of_a_permutation():
    labels = np.arange(12)
    (batches,) = passes(make("randombatch", labels, batch_size=4), 1)
    assert len(batches) == 3
    assert sorted(np.concatenate(batches).tolist()) == list(range(12))


def test_randombatch_tiles_replicas_and_rejects_single_label_chunks():
    labels = blocks(3, 10)
    for batch in itertools.chain(*passes(make("randombatch", labels, batch_size=6, num_replicas=2), 4)):
        assert len(batch) == 6 and np.array_equal(batch[:3], batch[3:])
        assert len(set(labels[batch].tolist())) >= 2


def test_randombatch_repairs_a_chunk_after_100_rejections():
    labels = np.array([0] * 99 + [1])
    (batches,) = passes(make("randombatch", labels, batch_size=2), 1)
    assert len(batches) == 50
    for batch in batches:
        assert sorted(labels[batch].tolist()) == [0, 1]


# ---- npairs -----------------------------------------------------------------------------------------


def test_npairs_batches_are_groups_of_one_class_truncated_to_b():
    labels = blocks(5, 6)
    (batches,) = passes(make("npairs", labels, samples_per_class=3), 1)
    assert len(batches) == 4  # ceil(30 / 8)
    for batch in batches:
        assert len(batch) == 8
        for group in (batch[0:3], batch[3:6], batch[6:8]):
            assert len(set(labels[group].tolist())) == 1


# ---- all samplers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("labels", [[7, 7, 7], [4], [0, 1], [3] * 20], ids=["one-class", "one-sample", "pair", "big"])
def test_degenerate_clusters_yield_batches_of_their_own_members(name, labels):
    labels = np.array(labels)
    for batches in passes(make(name, labels), 3):
        assert len(batches) >= 1
        for batch in batches:
            assert len(batch) >= 1 and batch.min() >= 0 and batch.max() < len(labels)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_batches_and_state_round_trip_mid_stream(name):
    labels = np.repeat(np.arange(7), [2, 3, 5, 8, 2, 4, 6])
    kwargs = {"num_replicas": 2} if name in ("adaptbalanced", "randombatch") else {}
    original = make(name, labels, seed=11, **kwargs)
    twin = make(name, labels, seed=11, **kwargs)
    assert all(
        np.array_equal(a, b) for a, b in zip(sum(passes(original, 2), []), sum(passes(twin, 2), []), strict=True)
    )
    stream = original.new_pass()
    next(stream)  # stop in the middle of a pass
    state = original.state_dict()
    restored = make(name, labels, seed=999, **kwargs)
    restored.load_state_dict(state)
    expected, found = sum(passes(original, 3), []), sum(passes(restored, 3), [])
    assert len(expected) == len(found)
    assert all(np.array_equal(a, b) for a, b in zip(expected, found, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_state_is_plain_data_and_loads_from_tensors(name):
    labels = np.repeat(np.arange(5), 4)
    sampler = make(name, labels, seed=2)
    passes(sampler, 1)
    state = sampler.state_dict()

    def check(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and check(v) for k, v in value.items())
        if isinstance(value, list):
            return all(check(v) for v in value)
        return isinstance(value, int | str | np.ndarray)

    assert check(state)
    as_tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
    restored = make(name, labels, seed=3)
    restored.load_state_dict(as_tensors)
    assert all(np.array_equal(a, b) for a, b in zip(*(list(s.new_pass()) for s in (sampler, restored)), strict=True))


def test_loading_a_state_of_another_cluster_is_refused():
    state = make("balanced_old", blocks(3, 4)).state_dict()
    with pytest.raises(ValueError, match="cluster"):
        make("balanced_old", blocks(3, 5)).load_state_dict(state)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("balanced_old", {"batch_size": 9, "samples_per_class": 2}),
        ("balanced_old", {"samples_per_class": 1}),
        ("balanced_old", {"num_replicas": 2}),
        ("npairs", {"num_replicas": 2}),
        ("adaptbalanced", {"batch_size": 8, "num_replicas": 3}),
        ("adaptbalanced", {"batch_size": 12, "num_replicas": 2, "samples_per_class": 4}),
        ("randombatch", {"batch_size": 2, "num_replicas": 2}),
        ("randombatch", {"batch_size": 0}),
        ("unknown", {}),
        ("adaptbalanced", {"small_class_action": "shrug"}),
    ],
)
def test_impossible_shapes_are_config_errors(name, kwargs):
    with pytest.raises(ConfigError):
        make(name, blocks(4, 4), **kwargs)
