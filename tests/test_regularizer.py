"""Mask regulariser (METHOD.md §5.3) against a naive double loop."""

import math

import pytest
import torch

from metriclearning.regularizer import mask_regularizer


def naive_regularizer(masks: torch.Tensor, lam: float, with_l1: bool) -> float:
    rows = [[max(0.0, v) for v in row] for row in masks.double().tolist()]
    count = len(rows)

    def cosine(a, b):
        norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(x * x for x in b))
        return sum(x * y for x, y in zip(a, b, strict=True)) / max(norm, 1e-8)

    pairs = [cosine(rows[i], rows[j]) for i in range(count) for j in range(count) if i != j]
    value = lam * (sum(pairs) / len(pairs) if pairs else 0.0)
    if with_l1:
        value += lam * sum(sum(row) for row in rows) / count
    return value


@pytest.mark.parametrize("scale", [1.0, 0.01])  # small masks: norms below 1 must not be clamped
@pytest.mark.parametrize("with_l1", [False, True])
@pytest.mark.parametrize("count", [2, 3, 5])
def test_matches_double_loop(count, with_l1, scale):
    masks = (torch.randn(count, 7, generator=torch.Generator().manual_seed(count)) + 0.3) * scale
    assert (masks < 0).any()  # the ReLU matters
    value = mask_regularizer(masks, lam=0.7, with_l1=with_l1)
    assert value.item() == pytest.approx(naive_regularizer(masks, 0.7, with_l1), rel=1e-5)


def test_single_mask_gives_a_differentiable_zero():
    masks = torch.rand(1, 6).requires_grad_()
    value = mask_regularizer(masks, lam=1.0, with_l1=False)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(masks.grad, torch.zeros_like(masks))
    with_l1 = mask_regularizer(masks, lam=0.5, with_l1=True)
    assert with_l1.item() == pytest.approx(0.5 * masks.sum().item(), rel=1e-6)


def test_identical_and_disjoint_masks():
    ones = torch.ones(3, 4)
    assert mask_regularizer(ones, lam=2.0, with_l1=False).item() == pytest.approx(2.0)
    assert mask_regularizer(torch.eye(4), lam=2.0, with_l1=False).item() == 0.0
    # a negative entry is removed by the ReLU, so these masks are disjoint after it
    assert mask_regularizer(torch.tensor([[1.0, -3.0], [0.0, 2.0]]), lam=1.0, with_l1=False).item() == 0.0


def test_gradient_reaches_only_relu_positive_entries():
    masks = torch.tensor([[1.0, -0.5, 2.0, 0.0], [0.5, 1.0, -1.0, 3.0], [-2.0, 1.0, 1.0, 1.0]], requires_grad=True)
    mask_regularizer(masks, lam=1.0, with_l1=True).backward()
    assert torch.all(masks.grad[masks <= 0] == 0)
    assert torch.all(masks.grad[masks > 0] != 0)


def test_all_negative_mask_stays_finite():
    masks = torch.tensor([[-1.0, -2.0, -0.1], [1.0, 0.5, 0.2]], requires_grad=True)
    value = mask_regularizer(masks, lam=1.0, with_l1=False)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(masks.grad).all()
