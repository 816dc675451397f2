"""Losses and the criterion against plain-loop float64 references of METHOD.md §5.2, §5.5 and §3.5."""

import math

import numpy as np
import pytest
import torch

from lib.errors import ConfigError
from metriclearning.criteria import CRITERION_NAMES, Criterion, build_criterion
from metriclearning.losses import MarginLoss, NPairsLoss, TripletAllLoss, TripletLoss, TripletSemihardLoss
from metriclearning.miners import MINER_NAMES, DistanceWeightedMiner


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one thread is faster and avoids fighting over the shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def embeddings_of(batch: int, dim: int = 6, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator, dtype=dtype), dim=1)


LABELS = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4])
TRIPLETS = (
    torch.tensor([0, 0, 2, 3, 4, 6, 7, 1]),
    torch.tensor([1, 1, 3, 4, 2, 7, 6, 0]),
    torch.tensor([2, 5, 0, 8, 6, 0, 5, 1]),  # last row: a same-class "negative", as easy-peasy may emit
)


def d(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(sum((x[k] - y[k]) ** 2 for k in range(len(x))) + 1e-8)


def margin_oracle(e, labels, triplets, beta, margin, nu, class_specific):
    """Literal §5.2 in float64 scalars; autograd through it gives the reference gradient."""
    terms, beta_rows, active = [], [], 0
    for a, p, n in zip(*(t.tolist() for t in triplets), strict=True):
        b = beta[labels[a]] if class_specific else beta
        beta_rows.append(b)
        pos = torch.clamp(d(e[a], e[p]) - b + margin, min=0)
        neg = torch.clamp(b - d(e[a], e[n]) + margin, min=0)
        active += int(pos > 0) + int(neg > 0)
        terms += [pos, neg]
    l1 = sum(abs(b) for b in beta_rows) if class_specific else abs(beta)
    if active == 0:
        return torch.zeros((), dtype=torch.float64)
    return (sum(terms) + nu * l1) / active


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("nu", [0.0, 0.3])
def test_margin_loss_value_and_gradients_match_loop(class_specific, nu):
    e = embeddings_of(9, seed=1)
    loss = MarginLoss(margin=0.2, n_classes=5 if class_specific else None, learnable_beta=True, nu=nu)
    with torch.no_grad():
        loss.beta.copy_(torch.tensor([0.9, 1.0, 1.1, 1.2, 1.3]) if class_specific else torch.tensor(1.05))
    x = e.clone().requires_grad_()
    value = loss(x, LABELS, TRIPLETS)
    value.backward()

    x64 = e.double().requires_grad_()
    beta64 = loss.beta.detach().double().requires_grad_()
    expected = margin_oracle(x64, LABELS.tolist(), TRIPLETS, beta64, 0.2, nu, class_specific)
    expected.backward()
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss.beta.grad.double(), beta64.grad, rtol=1e-4, atol=1e-6)
    assert x.grad.abs().sum() > 0 and loss.beta.grad.abs().sum() > 0


def test_margin_loss_without_active_pairs_is_zero_and_differentiable():
    e = embeddings_of(4, seed=2).requires_grad_()
    # huge margin on the wrong side: beta far above every distance and no negative term can be active
    loss = MarginLoss(margin=-5.0)
    value = loss(e, torch.tensor([0, 0, 1, 1]), (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    value.backward()
    assert value.item() == 0.0 and torch.equal(e.grad, torch.zeros_like(e))
    empty = torch.empty(0, dtype=torch.int64)
    assert MarginLoss()(e, torch.tensor([0, 0, 1, 1]), (empty, empty, empty)).item() == 0.0


def test_margin_loss_fixed_beta_is_a_buffer():
    loss = MarginLoss()
    assert list(loss.parameters()) == [] and loss.beta.item() == pytest.approx(1.2)
    learnable = MarginLoss(n_classes=7, learnable_beta=True)
    assert learnable.beta.shape == (7,) and torch.all(learnable.beta == 1.2)


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_loss_matches_loop(soft):
    e64 = embeddings_of(9, seed=3, dtype=torch.float64)
    terms = []
    for a, p, n in zip(*(t.tolist() for t in TRIPLETS), strict=True):
        diff = (d(e64[a], e64[p]) - d(e64[a], e64[n])).item()
        terms.append(math.log1p(math.exp(diff)) if soft else max(0.0, diff + 0.2))
    positive = [t for t in terms if t > 0]
    expected = sum(positive) / len(positive) if positive else 0.0
    x = e64.float().requires_grad_()
    value = TripletLoss(margin=0.2, soft=soft)(x, LABELS, TRIPLETS)
    value.backward()
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def semihard_oracle(e, labels, margin, soft):
    size, terms = len(labels), []
    dist = [[d(e[i], e[j]).item() for j in range(size)] for i in range(size)]
    for a in range(size):
        negatives = [n for n in range(size) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(size):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [n for n in negatives if dist[a][n] > dist[a][p]]
            n = (
                min(farther, key=lambda j, a=a: dist[a][j])
                if farther
                else max(negatives, key=lambda j, a=a: dist[a][j])
            )
            diff = dist[a][p] - dist[a][n]
            terms.append(math.log1p(math.exp(diff)) if soft else max(0.0, diff + margin))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_semihard_matches_loop(soft):
    e = embeddings_of(9, dim=3, seed=4)  # 3-d: every anchor has negatives on both sides of its positives
    expected = semihard_oracle(e.double(), LABELS.tolist(), 0.3, soft)
    x = e.clone().requires_grad_()
    value = TripletSemihardLoss(margin=0.3, soft=soft)(x, LABELS)
    value.backward()
    assert value.item() == pytest.approx(expected, rel=1e-4)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_triplet_semihard_takes_a_strictly_farther_negative_and_ignores_single_class_batches():
    # 1-d points: anchor 0 and positive 1 of class 0; negatives of class 1 at distance 1 (a tie) and 2.
    e = torch.tensor([[0.0], [1.0], [-1.0], [2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    x = e.clone().requires_grad_()
    value = TripletSemihardLoss(margin=0.3)(x, labels)
    value.backward()
    # Anchors 0 and 1: one negative ties with d(a, p) = 1 and is not farther; the one at 2 is taken: hinge 0
    # (the tied one would give 0.3). Anchors 2 and 3: d(a, p) = 3, no negative farther; the farthest (2): 1.3.
    assert value.item() == pytest.approx((0 + 0 + 1.3 + 1.3) / 4, rel=1e-4)
    assert semihard_oracle(e.double(), labels.tolist(), 0.3, soft=False) == pytest.approx(0.65, rel=1e-4)
    one_class = TripletSemihardLoss(margin=0.3)(embeddings_of(4), torch.zeros(4, dtype=torch.long))
    assert one_class.item() == 0.0  # no negative: no triplet, not a same-class stand-in


@pytest.mark.parametrize("loss", [TripletSemihardLoss(margin=0.2), TripletAllLoss(margin=0.2)])
def test_triplet_losses_keep_finite_gradients_on_duplicate_embeddings(loss):
    e = embeddings_of(4).repeat(2, 1)  # every point twice: zero distances inside the square root
    x = e.clone().requires_grad_()
    loss(x, torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])).backward()
    assert torch.isfinite(x.grad).all()


def test_triplet_all_matches_loop():
    labels = [0, 0, 1, 1, 1, 2, 3, 3, 4]
    e = embeddings_of(9, seed=5)
    e64 = e.double()
    terms = []
    for a in range(9):
        for p in range(9):
            for n in range(9):
                if p != a and labels[p] == labels[a] and labels[n] != labels[a]:
                    terms.append(max(0.0, (d(e64[a], e64[p]) - d(e64[a], e64[n])).item() + 0.2))
    x = e.clone().requires_grad_()
    value = TripletAllLoss(margin=0.2)(x, torch.tensor(labels))
    value.backward()
    assert len(terms) == 2 * 7 + 6 * 6 + 2 * 7
    assert value.item() == pytest.approx(sum(terms) / len(terms), rel=1e-4)  # zeros included in the mean
    assert x.grad.abs().sum() > 0


def test_npairs_matches_loop():
    labels = [0, 0, 1, 1, 1, 2, 3, 3, 4]
    e = embeddings_of(9, seed=6)
    alpha = 2.5
    e64 = e.double()
    rows = []
    for i in range(9):
        positives = [j for j in range(9) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        logits = {j: alpha * float(e64[i] @ e64[j]) for j in range(9) if j != i}
        log_norm = math.log(sum(math.exp(v) for v in logits.values()))
        rows.append(-sum(logits[j] - log_norm for j in positives) / len(positives))
    loss = NPairsLoss(alpha=alpha, learnable=True)
    x = e.clone().requires_grad_()
    value = loss(x, torch.tensor(labels))
    value.backward()
    assert len(rows) == 7
    assert value.item() == pytest.approx(sum(rows) / len(rows), rel=1e-5)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert loss.alpha.grad is not None and loss.alpha.grad.item() != 0
    assert list(NPairsLoss(alpha=1.0, learnable=False).parameters()) == []


# ---------------------------------------------------------------- criterion


def build(name: str, sampler: str = "distanceweighted", **overrides) -> Criterion:
    settings = dict(
        margin=0.2, sampler=sampler, soft_loss=False, lr_beta=0.0, n_train_classes=5, alpha=1.0, lr_alpha=0.0
    )
    settings.update(overrides)
    return build_criterion(name, **settings)


@pytest.mark.parametrize("sampler", MINER_NAMES)
@pytest.mark.parametrize("name", ["MarginLoss", "TripletLoss"])
def test_skip_rule_of_mined_criteria(name, sampler):
    criterion = build(name, sampler)
    single_class = np.zeros(6, dtype=np.int64)
    assert criterion.can_train_on(single_class) == (sampler == "easypeasy")
    assert criterion.can_train_on(np.array([3, 3, 7, 7]))
    assert criterion.can_train_on(np.array([1, 2, 3, 4]))  # two classes suffice, even without positives


@pytest.mark.parametrize("name", ["TripletSemihardLoss", "TripletAllLoss", "NPairsLoss"])
def test_skip_rule_of_unmined_criteria(name):
    criterion = build(name)
    assert not criterion.can_train_on(np.zeros(6, dtype=np.int64))  # positives, no negative
    assert not criterion.can_train_on(np.array([1, 2, 3, 4]))  # negatives, no positive
    assert criterion.can_train_on(np.array([5, 1, 5, 9]))


@pytest.mark.parametrize("name", CRITERION_NAMES)
def test_criterion_runs_in_float32_with_cpu_labels(name):
    e = embeddings_of(8, seed=7, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    value = build(name)(e, labels, torch.Generator().manual_seed(0))
    value.backward()
    assert value.dtype == torch.float32 and value.shape == ()
    assert torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


def test_criterion_edge_batches_do_not_crash():
    e = embeddings_of(4, seed=8).requires_grad_()
    # easy-peasy never skips: a single-class batch gets penalised same-class negatives and a real loss
    value = build("MarginLoss", "easypeasy")(e, torch.zeros(4, dtype=torch.int64))
    assert torch.isfinite(value) and value.item() > 0
    # distance-weighted with two classes but no positive: no triplets, loss 0, still differentiable
    value = build("MarginLoss")(e, torch.tensor([0, 1, 2, 3]))
    value.backward()
    assert value.item() == 0.0


def test_criterion_generator_makes_mining_reproducible():
    e = embeddings_of(16, seed=9)
    labels = torch.arange(4).repeat_interleave(4)
    criterion = build("TripletLoss")
    first = criterion(e, labels, torch.Generator().manual_seed(5))
    again = criterion(e, labels, torch.Generator().manual_seed(5))
    assert first.item() == again.item()
    miner = DistanceWeightedMiner()
    draws = {tuple(miner(e, labels, torch.Generator().manual_seed(s))[2].tolist()) for s in range(5)}
    assert len(draws) > 1


def test_loss_parameter_groups():
    margin = build("MarginLoss", lr_beta=5e-4, n_train_classes=11)
    group = margin.loss_parameter_group()
    assert group["name"] == "loss" and group["lr"] == 5e-4 and group["weight_decay"] == 0.0
    assert len(group["params"]) == 1 and group["params"][0].shape == (11,)
    assert build("MarginLoss").loss_parameter_group() is None
    npairs = build("NPairsLoss", alpha=3.0, lr_alpha=0.1).loss_parameter_group()
    assert npairs["lr"] == 0.1 and npairs["params"][0].item() == pytest.approx(3.0)
    assert build("NPairsLoss", lr_alpha=0.0).loss_parameter_group() is None
    assert build("TripletLoss").loss_parameter_group() is None


def test_build_criterion_rejects_unsupported_choices_and_applies_soft_loss():
    """--soft-loss with another criterion is a start-up warning (tests/test_config.py), given once."""
    with pytest.raises(ConfigError, match="not supported"):
        build("KantorovMarginLoss")
    with pytest.raises(ConfigError, match="NPairsLoss"):
        build("ContrastiveLoss")
    with pytest.raises(ConfigError, match="distanceweighted"):
        build("MarginLoss", "hardest")
    assert build("TripletLoss", soft_loss=True).loss.soft
    assert build("TripletSemihardLoss", soft_loss=True).loss.soft
    assert build("TripletSemihardLoss").miner is None and isinstance(build("TripletLoss").miner, DistanceWeightedMiner)
