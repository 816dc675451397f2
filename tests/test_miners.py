"""Miners and distances against literal loop implementations of METHOD.md §5.1 and §5.4."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import metriclearning.miners as miners_module
from lib.errors import ConfigError
from metriclearning.criteria import build_criterion
from metriclearning.distances import loss_distance, miner_distance_matrix, positive_mask
from metriclearning.miners import (
    MINER_NAMES,
    DistanceWeightedMiner,
    EasyPeasyMiner,
    FlexibleTripletMiner,
    LabelStats,
    build_miner,
    distance_weighted_q,
    distance_weighted_weights,
)
from tests.host_sync_spy import HostReadSpy, same_storage


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one thread is faster and avoids fighting over the shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def normalized(batch: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1)


def labels_of(sizes: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def naive_distances(embeddings: torch.Tensor) -> np.ndarray:
    e = embeddings.double().numpy()
    size = len(e)
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            out[i, j] = math.sqrt(max(e[i] @ e[i] + e[j] @ e[j] - 2 * e[i] @ e[j], 1e-4))
    return out


def triplet_list(triplets) -> list[tuple[int, int, int]]:
    return list(zip(*(t.tolist() for t in triplets), strict=True))


# ---------------------------------------------------------------- distances


def test_distances_match_definitions():
    e = normalized(6, 5, 0)
    e[3] = e[2]  # a duplicate: clamped at 0.01 for miners, sqrt(1e-8) for losses
    d = miner_distance_matrix(e)
    np.testing.assert_allclose(d.numpy(), naive_distances(e), rtol=1e-5, atol=1e-6)
    assert torch.allclose(d.diagonal(), torch.full((6,), 0.01))
    assert d[2, 3].item() == pytest.approx(0.01, abs=1e-6)
    x, y = e[:3], e[3:]
    expected = torch.tensor([math.sqrt(float(((a - b) ** 2).sum()) + 1e-8) for a, b in zip(x, y, strict=True)])
    assert torch.allclose(loss_distance(x, y), expected)
    assert loss_distance(e[2:3], e[3:4]).item() == pytest.approx(1e-4)


def test_positive_mask_excludes_diagonal():
    mask = positive_mask(torch.tensor([0, 1, 0, 0, 2]))
    expected = [[i != j and a == b for j, b in enumerate([0, 1, 0, 0, 2])] for i, a in enumerate([0, 1, 0, 0, 2])]
    assert mask.tolist() == expected


# ---------------------------------------------------------------- distance-weighted


def naive_weights(distances: np.ndarray, labels: list[int], dim: int, tau: float) -> np.ndarray:
    size = len(labels)
    log_w = np.zeros((size, size))
    clipped = np.maximum(distances, 0.5)
    for i in range(size):
        for j in range(size):
            ignored = labels[i] == labels[j] or clipped[i, j] >= tau
            if not ignored:
                dp = clipped[i, j]
                log_w[i, j] = (2 - dim) * math.log(dp) - (dim - 3) / 2 * math.log(1 - dp * dp / 4)
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True)) + 1e-9
    for i in range(size):
        for j in range(size):
            if labels[i] == labels[j]:
                w[i, j] = 0.0
            elif clipped[i, j] > tau:
                w[i, j] = 1e-6
    return w


@pytest.mark.parametrize("dim", [8, 512])
def test_distance_weighted_weights_match_loop(dim):
    e = normalized(10, 3, 1)  # 3-d points: distances cover (0, 2], some beyond tau
    e[9] = -e[0]  # an antipodal pair (D = 2) must not produce inf/NaN
    e[1] = -e[0] * 0.9 + e[2] * 0.1  # a far positive of sample 0
    labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 5]
    e = torch.nn.functional.normalize(e, dim=1)
    distances = miner_distance_matrix(e)
    same = torch.tensor(labels)[:, None] == torch.tensor(labels)[None, :]
    weights = distance_weighted_weights(distances, same, dim=dim, tau=1.4)
    expected = naive_weights(naive_distances(e), labels, dim, 1.4)
    assert torch.isfinite(weights).all()
    distances64 = naive_distances(e)
    assert (distances64 > 1.4).any() and (distances64 < 0.5).any()
    assert distances64[0, 1] > 1.4 and weights[0, 1] == 0  # a far positive is never a candidate negative
    np.testing.assert_allclose(weights.double().numpy(), expected, rtol=2e-3, atol=1e-12)


@pytest.mark.parametrize("labels", [[5, 2, 5, 9, 2, 5, 7], [0, 0, 0, 0], [3, 1, 4, 1, 5], [8]])
def test_label_stats_match_loop(labels):
    stats = LabelStats.from_labels(np.array(labels))
    size = len(labels)
    for i, label in enumerate(labels):
        positives = [j for j in range(size) if labels[j] == label and j != i]
        assert stats.class_sizes[i] == len(positives) + 1
        assert stats.negatives[i] == size - len(positives) - 1
        row = stats.positive_table[i].tolist()
        assert row == positives + [size] * (len(row) - len(positives))


def test_q_rule():
    assert distance_weighted_q(LabelStats.from_labels(labels_of([2] * 40))) == 1
    assert distance_weighted_q(LabelStats.from_labels(labels_of([4] * 20))) == 3
    # mean |P| = 34 / 12 = 2.83 -> floor(3.33) = 3
    assert distance_weighted_q(LabelStats.from_labels(labels_of([1, 2, 4, 5]))) == 3
    # mean |P| = 30 / 8 -> 4, capped by B - largest class = 2
    assert distance_weighted_q(LabelStats.from_labels(labels_of([6, 1, 1]))) == 2
    assert distance_weighted_q(LabelStats.from_labels(labels_of([5]))) == 0


@pytest.mark.parametrize("samples_per_class,q", [(2, 1), (4, 3)])
def test_distance_weighted_counts_and_sets(samples_per_class, q):
    labels = labels_of([samples_per_class] * 6)
    e = normalized(len(labels), 16, 2)
    anchors, positives, negatives = DistanceWeightedMiner()(e, labels, torch.Generator().manual_seed(0))
    assert anchors.dtype == torch.int64 and len(anchors) == len(labels) * q
    assert torch.equal(anchors, torch.arange(len(labels)).repeat_interleave(q))
    for i in range(len(labels)):
        rows = anchors == i
        expected_positives = [j for j in range(len(labels)) if labels[j] == labels[i] and j != i]
        assert positives[rows].tolist() == expected_positives  # |P_i| = q: all of them, ascending
        sampled = negatives[rows].tolist()
        assert sampled == sorted(set(sampled))  # distinct and ascending
        assert all(labels[j] != labels[i] for j in sampled)


def test_distance_weighted_first_draw_frequencies_match_weights():
    """q = 1 (S = 2): every negative is the first draw of its row, so frequencies follow w / sum(w)."""
    labels = labels_of([2] * 5)
    e = normalized(10, 6, 3)
    same = labels[:, None] == labels[None, :]
    weights = distance_weighted_weights(miner_distance_matrix(e), same, dim=6, tau=1.4).double()
    probabilities = (weights / weights.sum(dim=1, keepdim=True)).numpy()
    miner, generator, draws = DistanceWeightedMiner(), torch.Generator().manual_seed(7), 1000
    counts = np.zeros((10, 10))
    for _ in range(draws):
        anchors, _, negatives = miner(e, labels, generator)
        np.add.at(counts, (anchors.numpy(), negatives.numpy()), 1)
    assert counts.sum() == 10 * draws
    assert (counts[probabilities == 0] == 0).all()  # never a positive or the anchor itself
    for i in range(10):
        expected = probabilities[i] * draws
        big = expected >= 5
        observed = np.append(counts[i, big], counts[i, ~big].sum())
        expected = np.append(expected[big], expected[~big].sum())
        keep = expected > 0
        assert stats.chisquare(observed[keep], expected[keep]).pvalue > 1e-4


def test_distance_weighted_positive_pairing_rules():
    # class sizes 1, 2, 4, 5 -> q = 3: singleton none, |P| = 1 < q, |P| = 3 = q, |P| = 4 > q
    labels = labels_of([1, 2, 4, 5])
    e = normalized(12, 16, 4)
    miner, generator = DistanceWeightedMiner(), torch.Generator().manual_seed(1)
    inclusion = np.zeros(12)
    for _ in range(200):
        anchors, positives, negatives = miner(e, labels, generator)
        assert len(anchors) == 11 * 3 and 0 not in anchors.tolist()
        assert positives[anchors == 1].tolist() == [2, 2, 2]  # with replacement from a single positive
        assert positives[anchors == 3].tolist() == [4, 5, 6]  # exactly P_i
        drawn = positives[anchors == 7].tolist()  # P_7 = {8, 9, 10, 11}, q = 3 without replacement
        assert drawn == sorted(set(drawn)) and set(drawn) <= {8, 9, 10, 11}
        inclusion[drawn] += 1
        assert (labels[negatives] != labels[anchors]).all()
    np.testing.assert_allclose(inclusion[8:] / 200, 0.75, atol=0.1)


def test_distance_weighted_with_replacement_is_uniform():
    # sizes 3, 6, 6 -> mean |P| = 4.4 -> q = 4; the class of 3 has |P| = 2 < q
    labels = labels_of([3, 6, 6])
    e = normalized(15, 16, 5)
    miner, generator = DistanceWeightedMiner(), torch.Generator().manual_seed(2)
    picks = np.zeros(15)
    for _ in range(200):
        anchors, positives, _ = miner(e, labels, generator)
        drawn = positives[anchors == 0].tolist()
        assert len(drawn) == 4 and drawn == sorted(drawn) and set(drawn) <= {1, 2}
        np.add.at(picks, drawn, 1)
    np.testing.assert_allclose(picks[[1, 2]] / (4 * 200), 0.5, atol=0.06)


def test_distance_weighted_cap_single_class_and_reproducibility():
    labels = labels_of([6, 1, 1])
    e = normalized(8, 16, 6)
    anchors, positives, negatives = DistanceWeightedMiner()(e, labels, torch.Generator().manual_seed(0))
    assert len(anchors) == 12 and set(anchors.tolist()) == set(range(6))
    assert negatives.tolist() == [6, 7] * 6
    empty = DistanceWeightedMiner()(e[:5], torch.zeros(5, dtype=torch.int64), None)
    assert all(t.numel() == 0 and t.dtype == torch.int64 for t in empty)

    labels = labels_of([4] * 8)
    e = normalized(32, 16, 7)
    first = DistanceWeightedMiner()(e, labels, torch.Generator().manual_seed(11))
    again = DistanceWeightedMiner()(e, labels, torch.Generator().manual_seed(11))
    other = DistanceWeightedMiner()(e, labels, torch.Generator().manual_seed(12))
    assert triplet_list(first) == triplet_list(again)
    assert triplet_list(first) != triplet_list(other)


def test_miners_accept_numpy_labels_and_return_embedding_device():
    labels = labels_of([2, 2, 3])
    e = normalized(7, 8, 8)
    for name in MINER_NAMES:
        from_tensor = build_miner(name, margin=0.2)(e, labels, torch.Generator().manual_seed(3))
        from_numpy = build_miner(name, margin=0.2)(e, labels.numpy(), torch.Generator().manual_seed(3))
        assert triplet_list(from_tensor) == triplet_list(from_numpy)
        assert all(t.device == e.device and t.dtype == torch.int64 for t in from_tensor)


# ---------------------------------------------------------------- easy-peasy


def naive_easypeasy(embeddings: torch.Tensor, labels: list[int]) -> list[tuple[int, int, int]]:
    d = naive_distances(embeddings)
    size = len(labels)
    positives = [[j for j in range(size) if labels[j] == labels[i] and j != i] for i in range(size)]
    q = max(1, sum(len(p) for p in positives) // size)
    out = []
    for i in range(size):
        if not positives[i]:
            continue
        cost = [d[i, j] + 1e6 * (labels[i] == labels[j] or d[i, j] < 0.5) for j in range(size)]
        negatives = sorted(sorted(range(size), key=lambda j, cost=cost: cost[j])[:q])
        m = min(len(positives[i]), q)
        out += [(i, p, n) for p, n in zip(positives[i][:m], negatives[:m], strict=True)]
    return out


@pytest.mark.parametrize(
    "sizes,dim,seed",
    [([4] * 4, 16, 0), ([2] * 6, 16, 1), ([1, 3, 5, 2, 1], 8, 2), ([6, 2], 3, 3), ([7], 4, 4)],
)
def test_easypeasy_matches_loop(sizes, dim, seed):
    labels = labels_of(sizes)
    e = normalized(len(labels), dim, seed)
    if seed == 3:
        e = torch.nn.functional.normalize(e * 0.05 + torch.ones(dim), dim=1)  # all within 0.5: penalised fill-up
    mined = triplet_list(EasyPeasyMiner()(e, labels, None))
    assert mined == naive_easypeasy(e, labels.tolist())
    assert len(mined) > 0


# ---------------------------------------------------------------- flexible miners


def naive_flexible(d: np.ndarray, labels: list[int], positive_rule: str) -> list[tuple[int, int, int]]:
    out = []
    for i, label in enumerate(labels):
        positives = [j for j in range(len(labels)) if labels[j] == label and j != i]
        negatives = [j for j in range(len(labels)) if labels[j] != label]
        if not positives or not negatives:
            continue
        choose = max if positive_rule == "H" else min
        p = choose(positives, key=lambda j, i=i: d[i, j])
        out.append((i, p, min(negatives, key=lambda j, i=i: d[i, j])))
    return out


@pytest.mark.parametrize("rule", ["H", "E"])
@pytest.mark.parametrize("sizes", [[4] * 4, [1, 3, 2, 5, 1], [3]])
def test_deterministic_flexible_miners_match_loop(rule, sizes):
    labels = labels_of(sizes)
    e = normalized(len(labels), 8, len(sizes))
    mined = triplet_list(FlexibleTripletMiner(rule, "H")(e, labels, None))
    assert mined == naive_flexible(naive_distances(e), labels.tolist(), rule)


@pytest.mark.parametrize("name", ["EPSHN", "HPSHN", "RPSHN", "RPHN"])
def test_random_flexible_miners_follow_rules(name):
    labels = labels_of([1, 4, 3, 5, 3])
    e = normalized(len(labels), 6, 9)
    d, y = naive_distances(e), labels.tolist()
    miner, generator, margin = build_miner(name, margin=0.3), torch.Generator().manual_seed(5), 0.3
    reference = {(a, p, n) for a, p, n in naive_flexible(d, y, "H")}
    seen: dict[int, set[int]] = {}
    for _ in range(200):
        mined = triplet_list(miner(e, labels, generator))
        assert [a for a, _, _ in mined] == list(range(1, len(y)))  # one per anchor with pos and neg
        for a, p, n in mined:
            assert y[p] == y[a] and p != a and y[n] != y[a]
            if name[0] == "H":
                assert d[a, p] == max(d[a, j] for j in range(len(y)) if y[j] == y[a] and j != a)
            if name[0] == "E":
                assert d[a, p] == min(d[a, j] for j in range(len(y)) if y[j] == y[a] and j != a)
            semihard = [j for j in range(len(y)) if y[j] != y[a] and d[a, p] < d[a, j] < d[a, p] + margin]
            if name.endswith("SHN") and semihard:
                assert n in semihard
            else:
                hardest = next(h for aa, _, h in reference if aa == a)
                assert n == hardest
            seen.setdefault(a, set()).add(p if name[0] == "R" else n)
    if name[0] == "R":  # every positive of every anchor gets drawn
        assert all(len(seen[a]) == labels.eq(labels[a]).sum().item() - 1 for a in seen)
    else:  # some anchor really draws among several semi-hard negatives
        assert max(len(v) for v in seen.values()) > 1


def test_boundaries_a_tie_with_the_positive_is_not_semihard_and_the_easypeasy_cutoff_is_strict():
    """1-d points make the distances exact, so each boundary is met exactly."""
    labels = torch.tensor([0, 0, 1, 1])
    ties = torch.tensor([[0.0], [1.0], [-1.0], [1.1]])  # anchor 0: positive at 1, negatives at 1 (tie) and 1.1
    miner, generator = build_miner("EPSHN", margin=0.3), torch.Generator().manual_seed(0)
    negatives = {dict((a, n) for a, _, n in triplet_list(miner(ties, labels, generator)))[0] for _ in range(40)}
    assert negatives == {3}  # only the negative strictly farther than the positive is semi-hard
    cutoff = torch.tensor([[0.0], [3.0], [0.5], [0.7]])  # anchor 0: negatives at exactly CUTOFF = 0.5 and at 0.7
    mined = triplet_list(build_miner("easypeasy", margin=0.2)(cutoff, labels))
    assert dict((a, n) for a, _, n in mined)[0] == 2  # 0.5 is not below the cut-off: not penalised, nearest


def test_build_miner_names():
    assert isinstance(build_miner("distanceweighted", margin=0.3), DistanceWeightedMiner)
    assert build_miner("distanceweighted", margin=0.3).tau == pytest.approx(1.5)
    hpshn = build_miner("HPSHN", margin=0.1)
    assert (hpshn.positive_rule, hpshn.negative_rule, hpshn.margin) == ("H", "SH", 0.1)
    with pytest.raises(ConfigError, match="RPSHN"):
        build_miner("semihard", margin=0.2)


def test_host_read_spy_sees_a_synchronising_call():
    labels = torch.arange(4)
    with HostReadSpy(same_storage(labels)) as spy:
        labels.cpu(), bool(torch.ones(1) > 0), torch.ones(2).sum().item()
    assert spy.calls == ["__bool__", "item"]


@pytest.mark.parametrize("sampler", MINER_NAMES)
def test_mining_and_loss_never_read_device_values_on_the_host(sampler):
    """The per-batch path (miner, loss, backward) sizes its work from the host labels only (issue: no .item(),
    .cpu(), .numpy(), bool() of a device value); checked on the CPU, where the same calls would sync a GPU."""
    criterion = build_criterion(
        "MarginLoss" if sampler == "distanceweighted" else "TripletLoss", margin=0.2, sampler=sampler,
        soft_loss=False, lr_beta=0.0, n_train_classes=10, alpha=1.0, lr_alpha=0.0,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(24, 16, generator=generator), dim=1).requires_grad_(True)
    labels = torch.from_numpy(np.repeat(np.arange(6), [2, 3, 4, 5, 6, 4]))  # uneven classes: every branch
    with HostReadSpy(same_storage(labels)) as spy:
        criterion(embeddings, labels, generator).backward()
    assert spy.calls == []
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()


def test_a_uniform_draw_of_exactly_zero_never_picks_a_zero_weight_column(monkeypatch):
    """torch.rand may return 0.0; an admissible negative drawn so must still beat the positives and the anchor."""
    weights = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, 0.5]])
    draws = torch.tensor([[0.3, 0.1, 0.7, 0.9, 0.0, 0.2]])
    monkeypatch.setattr(torch, "rand", lambda shape, generator=None, device=None: draws.clone())
    assert sorted(miners_module._sample_without_replacement(weights, 2, None)[0].tolist()) == [4, 5]
