import pytest
import torch
from torch import nn

from lib.errors import ConfigError
from metriclearning.masks import LearnerMasks


def _set(masks: LearnerMasks, rows: list[list[float]]) -> None:
    with torch.no_grad():
        for param, row in zip(masks.params, rows, strict=True):
            param.copy_(torch.tensor(row))


def _blocks(masks: LearnerMasks) -> list[tuple[int, int]]:
    """(first, end) of the contiguous block of ones of every fixed mask."""
    result = []
    for row in masks.stacked():
        ones = torch.nonzero(row).flatten().tolist()
        assert ones == list(range(ones[0], ones[-1] + 1)), "block is not contiguous"
        result.append((ones[0], ones[-1] + 1))
    return result


def test_ones_init_and_separate_parameters():
    masks = LearnerMasks(6, 3)
    assert len(masks) == 3
    assert torch.equal(masks.stacked(), torch.ones(3, 6))
    assert len({id(p) for p in masks.params}) == 3
    assert len({p.data_ptr() for p in masks.params}) == 3
    assert all(p.requires_grad for p in masks.params) and masks.trainable


def test_normal_init_draws_from_generator():
    dim = 20000
    masks = LearnerMasks(dim, 1, init="normal", generator=torch.Generator().manual_seed(3))
    values = masks.params[0].detach()
    assert abs(values.mean().item() - 0.9) < 0.03
    assert abs(values.std().item() - 0.7) < 0.03
    again = LearnerMasks(dim, 1, init="normal", generator=torch.Generator().manual_seed(3))
    other = LearnerMasks(dim, 1, init="normal", generator=torch.Generator().manual_seed(4))
    assert torch.equal(again.params[0], masks.params[0])
    assert not torch.equal(other.params[0], masks.params[0])


def test_normal_init_with_several_masks_gives_identical_copies():
    masks = LearnerMasks(5, 3, init="normal", generator=torch.Generator().manual_seed(0))
    stacked = masks.stacked()
    assert torch.equal(stacked[0], stacked[1]) and torch.equal(stacked[0], stacked[2])


def test_full_split_order_and_fresh_copies():
    masks = LearnerMasks(3, 2)
    _set(masks, [[1, 2, 3], [4, 5, 6]])
    old = list(masks.params)
    parents = masks.split([True, True])
    assert parents == [0, 0, 1, 1]
    expected = torch.tensor([[1, 2, 3], [1, 2, 3], [4, 5, 6], [4, 5, 6]], dtype=torch.float32)
    assert torch.equal(masks.stacked(), expected)
    assert not any(new is o for new in masks.params for o in old)
    assert len({p.data_ptr() for p in masks.params}) == 4
    with torch.no_grad():
        masks.params[0].add_(1.0)
    assert torch.equal(masks.params[1], torch.tensor([1.0, 2, 3]))


def test_partial_split_keeps_unsplit_parameter():
    masks = LearnerMasks(2, 3)
    _set(masks, [[1, 1], [2, 2], [3, 3]])
    old = list(masks.params)
    parents = masks.split([True, False, True])
    assert parents == [0, 0, 1, 2, 2]
    assert masks.stacked()[:, 0].tolist() == [1, 1, 2, 3, 3]
    assert masks.params[2] is old[1]
    assert all(p.requires_grad for p in masks.params)
    with pytest.raises(ValueError):
        masks.split([True])


def test_fixed_masks_three_levels_of_ten_dims():
    masks = LearnerMasks(10, 1, fixed=True)
    for _ in range(3):
        masks.split([True] * len(masks))
    sizes = [end - start for start, end in _blocks(masks)]
    assert sizes == [1, 1, 1, 2, 1, 1, 1, 2]
    stacked = masks.stacked()
    assert torch.equal(stacked.sum(0), torch.ones(10))
    assert set(stacked.unique().tolist()) == {0.0, 1.0}
    assert not any(p.requires_grad for p in masks.params) and not masks.trainable
    assert torch.equal(LearnerMasks(10, 8, fixed=True).stacked(), stacked)


def test_initial_masks_partial_last_level_in_list_order():
    # 12 -> 6,6 -> 3,3,3,3 -> the first two split: 1,2 | 1,2 | 3 | 3
    masks = LearnerMasks(12, 6, fixed=True)
    assert _blocks(masks) == [(0, 1), (1, 3), (3, 4), (4, 6), (6, 9), (9, 12)]
    assert _blocks(LearnerMasks(8, 3, fixed=True)) == [(0, 2), (2, 4), (4, 8)]


def test_apply_and_relu():
    masks = LearnerMasks(3, 2)
    _set(masks, [[1, 1, 1], [2.0, -1.0, 0.5]])
    z = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 1.0, 2.0]])
    assert torch.equal(masks.apply_mask(z, 1, relu=True), torch.tensor([[2.0, 0.0, 1.5], [-2.0, 0.0, 1.0]]))
    assert torch.equal(masks.apply_mask(z, 1, relu=False), torch.tensor([[2.0, -2.0, 1.5], [-2.0, -1.0, 1.0]]))


def test_summed_with_and_without_l1():
    masks = LearnerMasks(3, 2)
    _set(masks, [[1.0, 3.0, -2.0], [2.0, 2.0, 4.0]])
    assert torch.allclose(masks.summed(relu=True, normalize=None), torch.tensor([3.0, 5.0, 4.0]))
    # relu + l1: [1,3,0]/4 + [2,2,4]/8
    expected = torch.tensor([0.25 + 0.25, 0.75 + 0.25, 0.0 + 0.5])
    assert torch.allclose(masks.summed(relu=True, normalize="l1"), expected)
    # no relu + l1: [1,3,-2]/6 + [2,2,4]/8
    expected = torch.tensor([1 / 6 + 0.25, 0.5 + 0.25, -1 / 3 + 0.5])
    assert torch.allclose(masks.summed(relu=False, normalize="l1"), expected)
    with pytest.raises(ConfigError):
        masks.summed(relu=True, normalize="l2")


def test_freeze_applies_to_later_splits():
    masks = LearnerMasks(4, 2)
    masks.freeze()
    assert not masks.trainable
    masks.split([True, False])
    assert len(masks) == 3
    assert not any(p.requires_grad for p in masks.params)


def test_summary_values():
    masks = LearnerMasks(4, 2)
    _set(masks, [[0.0, 2.0, 1.0, -1.0], [-1.0, -2.0, -3.0, -2.0]])
    first, dead = masks.summary()
    assert first["mask"] == 0 and first["active_dims"] == pytest.approx(1.5)
    assert (first["min"], first["mean"], first["max"]) == pytest.approx((-1.0, 0.5, 2.0))
    assert dead["active_dims"] == 0.0 and dead["mean"] == pytest.approx(-2.0)


def test_state_dict_resizes_on_load():
    holder = nn.Module()
    holder.masks = LearnerMasks(3, 2)
    source = nn.Module()
    source.masks = LearnerMasks(3, 5)
    _set(source.masks, [[i, i + 1, i + 2] for i in range(5)])
    holder.load_state_dict(source.state_dict())
    assert len(holder.masks) == 5
    assert torch.equal(holder.masks.stacked(), source.masks.stacked())
    assert all(p.requires_grad for p in holder.masks.params)

    small = nn.Module()
    small.masks = LearnerMasks(3, 1)
    holder.load_state_dict(small.state_dict())
    assert len(holder.masks) == 1 and torch.equal(holder.masks.stacked(), torch.ones(1, 3))

    wrong_dim = nn.Module()
    wrong_dim.masks = LearnerMasks(4, 2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        holder.load_state_dict(wrong_dim.state_dict())


def test_invalid_settings():
    with pytest.raises(ConfigError, match="masking-init"):
        LearnerMasks(4, 1, init="uniform")
    with pytest.raises(ConfigError, match="fixed-mask"):
        LearnerMasks(4, 1, init="normal", fixed=True)
