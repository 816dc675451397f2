import math
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from lib.errors import CheckpointError, ConfigError
from metriclearning.backbones import FrozenBatchNorm2d, SmallMapConv2d, build_backbone
from metriclearning.model import EmbeddingModel, check_init_method


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """resnet18 backward on a shared 2-core machine is much faster single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0, **kwargs) -> EmbeddingModel:
    settings = {"arch": "resnet18", "sz_embedding": 8, "generator": torch.Generator().manual_seed(seed)}
    return EmbeddingModel(**{**settings, **kwargs})


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _set_masks(model: EmbeddingModel, rows: list[list[float]]) -> None:
    with torch.no_grad():
        for param, row in zip(model.masks.params, rows, strict=True):
            param.copy_(torch.tensor(row))


def test_forward_modes_shapes_and_values():
    model = _model(n_masks=2).eval()
    _set_masks(model, [[1, 0, 2, -1, 1, 1, 1, 1], [0.5] * 8])
    images = _images()
    with torch.no_grad():
        pooled = model.backbone(images).mean(dim=(2, 3))
        z = model.embedding(pooled)
        penultimate = model.penultimate(images)
        full = model(images)
        masked = model(images, learner_id=0)
    assert penultimate.shape == (4, 512) and full.shape == (4, 8) and masked.shape == (4, 8)
    assert torch.allclose(penultimate, _unit(pooled), atol=1e-6)
    assert torch.allclose(full, _unit(z), atol=1e-6)
    relu_mask = torch.tensor([1.0, 0, 2, 0, 1, 1, 1, 1])
    assert torch.allclose(masked, _unit(z * relu_mask), atol=1e-6)
    assert torch.allclose(masked.norm(dim=1), torch.ones(4), atol=1e-6)
    # a uniform mask changes nothing after normalisation
    assert torch.allclose(model(images, learner_id=1), full, atol=1e-6)


def test_raw_masks_without_relu():
    model = _model(mask_relu=False).eval()
    mask = [1.0, -1.0, 2.0, 0.0, 1.0, 1.0, -3.0, 1.0]
    _set_masks(model, [mask])
    images = _images()
    with torch.no_grad():
        z = model.embedding(model.backbone(images).mean(dim=(2, 3)))
        assert torch.allclose(model(images, 0), _unit(z * torch.tensor(mask)), atol=1e-6)


def test_max_pooling():
    model = _model(pooling="max").eval()
    images = _images()
    with torch.no_grad():
        expected = _unit(model.backbone(images).amax(dim=(2, 3)))
        assert torch.allclose(model.penultimate(images), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="features-pooling"):
        _model(pooling="sum")


def test_mask_sum_with_l1_normalisation():
    model = _model(n_masks=2, masks_sum_for_full_emb=True, masks_normalize_before_sum="l1").eval()
    _set_masks(model, [[1, 1, 2, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]])
    weights = torch.tensor([0.25, 0.25, 0.5, 0, 0.25, 0.25, 0.25, 0.25])
    images = _images()
    with torch.no_grad():
        z = model.embedding(model.backbone(images).mean(dim=(2, 3)))
        assert torch.allclose(model(images), _unit(z * weights), atol=1e-6)
    with pytest.raises(ConfigError, match="masks-sum-for-full-emb"):
        _model(masks_normalize_before_sum="l1")


def test_gradient_reaches_only_the_used_mask():
    model = _model(n_masks=3).train()
    _set_masks(model, [[1.0 + i for i in range(8)]] * 3)
    model(_images(), learner_id=1)[:, 0].sum().backward()
    assert model.masks.params[0].grad is None and model.masks.params[2].grad is None
    assert model.masks.params[1].grad.abs().sum() > 0
    assert model.embedding.weight.grad.abs().sum() > 0


def test_dropout_only_in_training():
    model = _model(dropout=0.5)
    images = _images()
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(images), model(images))
        model.train()
        assert not torch.allclose(model(images), model(images))
    with pytest.raises(ConfigError, match="dropout"):
        _model(dropout=1.0)


def test_autocast_output_stays_float32():
    model = _model(n_masks=2).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_images(), learner_id=1)
    assert out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)


def test_channels_last_gives_the_same_embedding():
    model = _model().eval()
    images = _images()
    with torch.no_grad():
        expected = model(images)
        model = model.to(memory_format=torch.channels_last)
        out = model(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, expected, atol=1e-5)


def test_init_depends_only_on_the_generator():
    a, b, c = _model(seed=5), _model(seed=5), _model(seed=6)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.embedding.weight, c.embedding.weight)
    assert not torch.equal(a.backbone.conv1.weight, c.backbone.conv1.weight)


def test_default_init_and_alias():
    default, alias = _model(seed=2), _model(seed=2, init_method="pt_splitted")
    assert torch.equal(default.embedding.weight, alias.embedding.weight)
    bound = 1 / math.sqrt(512)
    assert default.embedding.weight.abs().max() <= bound and default.embedding.bias.abs().max() <= bound


@pytest.mark.parametrize(("n_clusters", "rows"), [(3, [4, 4, 2]), (4, [3, 3, 3, 1]), (1, [10])])
def test_kaiming_fan_out_is_chunked(n_clusters, rows):
    model = _model(sz_embedding=10, init_method="kaiming_normal_fan_out", nb_clusters_final=n_clusters)
    weight = model.embedding.weight.detach()
    start = 0
    for count in rows:
        std = weight[start : start + count].std().item()
        assert std == pytest.approx(1 / math.sqrt(count), rel=0.12), (count, std)
        start += count
    assert model.embedding.bias.abs().max() <= 1 / math.sqrt(512)


def test_kaiming_fan_in_and_xavier():
    fan_in = _model(sz_embedding=10, init_method="kaiming_normal_fan_in", nb_clusters_final=3)
    assert fan_in.embedding.weight.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.1)
    xavier_u = _model(sz_embedding=10, init_method="xavier_uniform_2", nb_clusters_final=3).embedding.weight
    bound_rows4 = 2 * math.sqrt(6 / (512 + 4))
    assert xavier_u.abs().max().item() <= 2 * math.sqrt(6 / (512 + 2))
    assert xavier_u[:8].abs().max().item() <= bound_rows4
    assert xavier_u.abs().max().item() > 0.95 * bound_rows4
    xavier_n = _model(sz_embedding=10, init_method="xavier_normal_0.5", nb_clusters_final=2).embedding.weight
    assert xavier_n.std().item() == pytest.approx(0.5 * math.sqrt(2 / (512 + 5)), rel=0.1)


def test_trunc_normal_init():
    layer = _model(sz_embedding=64, init_method="trunc_normal").embedding
    assert layer.weight.abs().max().item() <= 0.2
    # N(0, 0.1²) truncated at ±2σ has std 0.1·sqrt(1 − 2·2φ(2)/(2Φ(2) − 1)) ≈ 0.088
    assert layer.weight.std().item() == pytest.approx(0.088, rel=0.05)
    assert torch.equal(layer.bias, torch.full((64,), 0.1))


@pytest.mark.parametrize("method", ["orthogonal", "xavier_uniform_abc", "kaiming_normal_fan_both"])
def test_unknown_init_method(method):
    with pytest.raises(ConfigError, match="init-method"):
        check_init_method(method)
    with pytest.raises(ConfigError, match="init-method"):
        _model(init_method=method)


def test_known_init_methods_pass_the_check():
    for method in (None, "pt_splitted", "trunc_normal", "xavier_normal_1.5", "kaiming_normal_fan_in"):
        check_init_method(method)


def test_frozen_batchnorm_keeps_running_stats_and_trains_affine():
    model = _model().train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) and not m.training for m in norms)
    assert model.training and model.dropout.training
    with torch.no_grad():  # non-trivial statistics, so that batch statistics would differ from them
        for m in norms:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    affine_before = model.backbone.bn1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        optimizer.zero_grad()
        model(_images(seed=step), learner_id=0).pow(3).sum().backward()
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())
    assert not torch.equal(model.backbone.bn1.weight, affine_before)
    # eval-mode normalisation: one image gives the same output alone or inside a batch
    model.dropout.p = 0.0
    images = _images()
    with torch.no_grad():
        assert torch.allclose(model(images)[:1], model(images[:1]), atol=1e-5)


def test_unknown_arch_lists_supported():
    with pytest.raises(ConfigError, match="resnet18, resnet34, resnet50"):
        build_backbone("vgg16", pretrained=False, weights_path=None)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """A torchvision resnet18 state_dict (classifier included) saved as a plain weights file."""
    torch.manual_seed(11)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "r18.pt"
    torch.save(state, path)
    return str(path), state


def test_weights_file_round_trip(resnet18_file):
    path, state = resnet18_file
    backbone, width = build_backbone("resnet18", pretrained=True, weights_path=path)
    loaded = backbone.state_dict()
    assert width == 512
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(value, state[key]) for key, value in loaded.items())
    model = EmbeddingModel(arch="resnet18", sz_embedding=8, pretrained_weights=path)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_weights_file_mismatch_is_reported(resnet18_file, tmp_path):
    path, state = resnet18_file
    with pytest.raises(CheckpointError, match="does not match"):  # resnet18 weights into resnet34
        build_backbone("resnet34", pretrained=False, weights_path=path)
    state = dict(state)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as info:
        build_backbone("resnet18", pretrained=False, weights_path=str(bad))
    message = str(info.value)
    assert "layer1.0.conv1.weight" in message and "extra.weight" in message
    assert "conv1.weight: file (64, 3, 3, 3) vs model (64, 3, 7, 7)" in message


class _Payload:
    pass


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        build_backbone("resnet18", pretrained=False, weights_path=str(path))
    with pytest.raises(ConfigError, match="no such file"):
        build_backbone("resnet18", pretrained=False, weights_path=str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("content", [b"export PATH=/usr/bin\n", b"", b"\x80\x02K\x01.", bytes(range(256))])
def test_a_weights_file_that_is_not_a_torch_file_is_one_error(tmp_path, content):
    path = tmp_path / "env.sh"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"env\.sh could not be loaded as a tensors-only state_dict"):
        build_backbone("resnet18", pretrained=False, weights_path=str(path))


def test_offline_download_message(monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError) as info:
        build_backbone("resnet18", pretrained=True, weights_path=None)
    message = str(info.value)
    assert "--pretrained-weights PATH" in message
    assert "resnet18-f37072fd.pth" in message and "checkpoints" in message
    assert "Name or service not known" in message


# (input shape, out channels, kernel, stride, padding, bias): tiny outputs take the unfold path, larger ones not
SMALL_MAP_CASES = [
    ((3, 8, 1, 1), 6, 3, 1, 1, False),  # ResNet layer4 at 32 px: 3x3 on a 1x1 map
    ((3, 8, 2, 2), 6, 3, 2, 1, False),  # stride 2 into a 1x1 map
    ((3, 8, 2, 2), 6, 1, 2, 0, True),  # the 1x1 downsample
    ((2, 4, 4, 5), 3, 3, 1, 1, True),  # 20 positions: the regular convolution
    ((2, 4, 4, 4), 3, (3, 1), 1, (1, 0), False),  # 16 positions, rectangular kernel
    ((2, 3, 9, 7), 5, 7, 2, 3, False),  # the ResNet stem on a tiny input
]


@pytest.mark.parametrize("shape, out_channels, kernel, stride, padding, bias", SMALL_MAP_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_small_map_convolution_equals_conv2d(shape, out_channels, kernel, stride, padding, bias, channels_last):
    generator = torch.Generator().manual_seed(0)
    reference = nn.Conv2d(shape[1], out_channels, kernel, stride=stride, padding=padding, bias=bias).double()
    small = SmallMapConv2d.sharing(reference)
    assert small.weight is reference.weight and list(small.state_dict()) == list(reference.state_dict())
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    outputs = [conv(x) for conv in (reference, small)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-12, atol=1e-12)
    upstream = torch.randn(outputs[0].shape, generator=generator, dtype=torch.float64)
    params = [x, reference.weight] + ([reference.bias] if bias else [])
    grads = [torch.autograd.grad(out, params, upstream) for out in outputs]
    for small_grad, reference_grad in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(small_grad, reference_grad, rtol=1e-12, atol=1e-12)


def test_backbone_convolutions_use_the_small_map_path_with_torchvision_keys():
    features, _ = build_backbone("resnet18", pretrained=False, weights_path=None)
    convolutions = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions and all(type(m) is SmallMapConv2d for m in convolutions)
    expected = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d).state_dict()
    assert set(features.state_dict()) == {key for key in expected if not key.startswith("fc.")}
