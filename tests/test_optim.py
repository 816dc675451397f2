import math

import pytest
import torch
from torch import nn

from lib.errors import ConfigError
from metriclearning.model import EmbeddingModel
from metriclearning.optim import (
    OptimSettings,
    build_optimizer,
    fused_supported,
    remove_mask_group,
    replace_mask_group,
    scheduled_lr,
    set_epoch_lrs,
)

SETTINGS = OptimSettings(
    base_lr=1e-3, emb_lr_mult=10.0, weight_decay=1e-4, mask_lr_mult=100.0, mask_wd_mult=0.5, lr_step=2, lr_gamma=0.5
)


def _model(n_masks: int = 2, **kwargs) -> EmbeddingModel:
    return EmbeddingModel(
        arch="resnet18", sz_embedding=4, n_masks=n_masks, generator=torch.Generator().manual_seed(0), **kwargs
    )


def _groups(optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    return {g["name"]: g for g in optimizer.param_groups}


def _fake_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    """One optimizer step in which only ``params`` have gradients (creates their Adam state)."""
    optimizer.zero_grad()
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()


def test_groups_order_lrs_and_weight_decays():
    model = _model()
    beta = nn.Parameter(torch.ones(3))
    loss_group = {"name": "loss", "params": [beta], "lr": 5e-4, "weight_decay": 0.0}
    optimizer = build_optimizer(model, SETTINGS, loss_group)
    assert isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW)
    names = [g["name"] for g in optimizer.param_groups]
    assert names == ["backbone", "embedding", "loss", "masks"]
    groups = _groups(optimizer)
    expected = {
        "backbone": (1e-3, 1e-4),
        "embedding": (1e-2, 1e-4),
        "loss": (5e-4, 0.0),
        "masks": (1e-1, 5e-5),
    }
    for name, (lr, wd) in expected.items():
        assert groups[name]["lr"] == pytest.approx(lr) and groups[name]["base_lr"] == pytest.approx(lr)
        assert groups[name]["weight_decay"] == pytest.approx(wd)
        assert groups[name]["betas"] == (0.9, 0.999) and groups[name]["eps"] == 1e-8
    assert any(p is model.backbone.bn1.weight for p in groups["backbone"]["params"])
    assert groups["masks"]["params"] == list(model.masks.params)
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted([id(p) for p in model.parameters()] + [id(beta)])


def test_adamw_unknown_optimizer_and_no_mask_group():
    optimizer = build_optimizer(_model(fixed_mask=True), OptimSettings(optimizer="AdamW"), None)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "embedding"]
    frozen = _model()
    frozen.masks.freeze()
    assert "masks" not in _groups(build_optimizer(frozen, SETTINGS, None))
    with pytest.raises(ConfigError, match="optimizer"):
        build_optimizer(frozen, OptimSettings(optimizer="SGD"), None)


def test_scheduled_lr():
    assert [scheduled_lr(1.0, e, SETTINGS) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert scheduled_lr(3.0, 1000, OptimSettings()) == 3.0
    uneven = OptimSettings(lr_step=2.5, lr_gamma=0.1)
    assert [scheduled_lr(1.0, e, uneven) for e in (2, 3, 5)] == pytest.approx([1.0, 0.1, 0.01])


def test_freeze_unfreeze_and_schedule_restore_each_groups_own_lr():
    optimizer = build_optimizer(_model(), SETTINGS, None)
    lrs = set_epoch_lrs(optimizer, 0, SETTINGS, backbone_frozen=True, masks_frozen=True)
    assert lrs == pytest.approx({"backbone": 0.0, "embedding": 1e-2, "masks": 0.0})
    lrs = set_epoch_lrs(optimizer, 1, SETTINGS, backbone_frozen=False, masks_frozen=False)
    assert lrs == pytest.approx({"backbone": 1e-3, "embedding": 1e-2, "masks": 1e-1})
    lrs = set_epoch_lrs(optimizer, 2, SETTINGS, backbone_frozen=True, masks_frozen=False)
    assert lrs == pytest.approx({"backbone": 0.0, "embedding": 5e-3, "masks": 5e-2})
    lrs = set_epoch_lrs(optimizer, 5, SETTINGS, backbone_frozen=False, masks_frozen=False)
    assert lrs == pytest.approx({"backbone": 2.5e-4, "embedding": 2.5e-3, "masks": 2.5e-2})
    groups = _groups(optimizer)
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx(lrs)
    assert groups["embedding"]["base_lr"] == pytest.approx(1e-2)


def test_replace_mask_group_keeps_unsplit_state_and_drops_stale_state():
    model = _model(n_masks=2)
    optimizer = build_optimizer(model, SETTINGS, None)
    old = list(model.masks.params)
    _fake_step(optimizer, old)
    kept_moment = optimizer.state[old[1]]["exp_avg"]
    parents = model.masks.split([True, False])
    new = list(model.masks.params)
    replace_mask_group(optimizer, old, new, parents, lr=0.25)
    group = _groups(optimizer)["masks"]
    assert group["params"] == new and group["lr"] == 0.25 and group["base_lr"] == pytest.approx(1e-1)
    assert new[2] is old[1] and optimizer.state[new[2]]["exp_avg"] is kept_moment
    assert new[0] not in optimizer.state and new[1] not in optimizer.state
    assert old[0] not in optimizer.state
    _fake_step(optimizer, new)
    assert {id(p) for p in optimizer.state} == {id(p) for p in new}
    assert optimizer.state[new[0]]["step"] == 1 and optimizer.state[new[2]]["step"] == 2
    # a rebuilt model (three masks) with a fresh optimizer accepts the saved optimizer state
    saved_model, saved_optimizer = model.state_dict(), optimizer.state_dict()
    resumed = _model(n_masks=1)
    resumed.load_state_dict(saved_model)
    resumed_optimizer = build_optimizer(resumed, SETTINGS, None)
    resumed_optimizer.load_state_dict(saved_optimizer)
    assert torch.equal(resumed_optimizer.state[resumed.masks.params[2]]["exp_avg"], kept_moment)


def test_remove_mask_group():
    model = _model(n_masks=2)
    optimizer = build_optimizer(model, SETTINGS, None)
    _fake_step(optimizer, [*model.masks.params, model.embedding.weight])
    assert model.masks.params[0] in optimizer.state
    model.masks.freeze()
    remove_mask_group(optimizer)
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "embedding"]
    assert not any(p in optimizer.state for p in model.masks.params)
    assert model.embedding.weight in optimizer.state
    lrs = set_epoch_lrs(optimizer, 0, SETTINGS, backbone_frozen=False, masks_frozen=True)
    assert set(lrs) == {"backbone", "embedding"} and math.isclose(lrs["embedding"], 1e-2)
    remove_mask_group(optimizer)
    replace_mask_group(optimizer, list(model.masks.params), list(model.masks.params), [0, 1], lr=1.0)
    assert len(optimizer.param_groups) == 2


def test_fused_adam_matches_the_multi_tensor_update():
    """The fused kernel is used where it applies and takes the same steps as torch's default Adam."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]
    grads = [[torch.randn(w.shape, generator=generator) for w in weights] for _ in range(3)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        assert fused_supported(params)
        optimizer = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-4, fused=fused, foreach=None if fused else True)
        for step_grads in grads:
            for param, grad in zip(params, step_grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
        results.append(params)
    for fused_param, reference in zip(*results, strict=True):
        torch.testing.assert_close(fused_param, reference, rtol=1e-6, atol=1e-7)
    assert not fused_supported([torch.nn.Parameter(torch.zeros(2, device="meta"))])
