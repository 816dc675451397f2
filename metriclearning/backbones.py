"""Torchvision ResNet backbones cut after layer4, with permanently frozen BatchNorm statistics.

BatchNorm stays in eval mode because metric-learning batches are small and single-cluster: batch
statistics would be noisy and biased, so the ImageNet running statistics are kept (§4.1).
"""

import os
from collections import OrderedDict
from urllib.error import URLError

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lib.errors import CheckpointError, ConfigError

SUPPORTED_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
SMALL_MAP_POSITIONS = 16  # output positions up to which a CPU convolution runs as unfold + matmul


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics and never updates them.

    Only ``train()`` is overridden, so the state-dict keys equal torchvision's and ImageNet weights load
    unchanged; the affine weight and bias stay trainable.
    """

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        return super().train(False)


class SmallMapConv2d(nn.Conv2d):
    """A Conv2d that computes outputs of at most SMALL_MAP_POSITIONS positions on the CPU as unfold + matmul.

    The same function with the same parameters and state-dict keys. oneDNN's CPU convolution backward is 3-10x
    slower than the equivalent matrix product when the output map is tiny (ResNet's layer3/layer4 at 32-64 px
    inputs, i.e. the quickstart and the tests): measured, a resnet18 training step at 32 px runs about twice
    as fast. Elsewhere (larger maps, CUDA) the regular convolution runs.
    """

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        regular = x.device.type != "cpu" or x.dim() != 4 or self.groups != 1 or self.padding_mode != "zeros"
        if regular or isinstance(self.padding, str):  # "same"/"valid" padding: no positions to compute here
            return super()._conv_forward(x, weight, bias)
        out_height, out_width = (
            (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
            for size, pad, dilation, kernel, stride in zip(
                x.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        )
        if out_height * out_width > SMALL_MAP_POSITIONS:
            return super()._conv_forward(x, weight, bias)
        columns = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C*kh*kw, L)
        out = torch.matmul(weight.flatten(1), columns)
        if bias is not None:
            out = out + bias[:, None]
        return out.view(x.shape[0], self.out_channels, out_height, out_width)

    @classmethod
    def sharing(cls, conv: nn.Conv2d) -> "SmallMapConv2d":
        """A SmallMapConv2d holding ``conv``'s own parameter objects."""
        small = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        small.weight, small.bias = conv.weight, conv.bias
        return small


def _use_small_map_convolutions(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, SmallMapConv2d.sharing(child))
        else:
            _use_small_map_convolutions(child)


def _weights_enum(arch: str) -> torchvision.models.WeightsEnum:
    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1


def _download_state_dict(arch: str) -> dict[str, torch.Tensor]:
    weights = _weights_enum(arch)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as error:  # URLError is an OSError
        file_name = os.path.basename(weights.url)
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", file_name)
        reason = error.reason if isinstance(error, URLError) else error
        raise ConfigError(
            f"Could not download the ImageNet weights of {arch} ({weights.url}): {reason}. "
            f"On an offline machine pass --pretrained-weights PATH (a state_dict of torchvision's {arch}), "
            f"or copy {file_name} to {cache}, or use --pretrained 0 for random initialisation."
        ) from error


def _read_weights_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ConfigError(f"--pretrained-weights {path}: no such file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file (any text or binary), truncated, or hostile: refused alike
        first_line = str(error).splitlines()[0][:200] if str(error) else ""
        raise CheckpointError(
            f"--pretrained-weights {path} could not be loaded as a tensors-only state_dict "
            f"(weights_only=True): {type(error).__name__}: {first_line}. Save the weights with "
            "torch.save(model.state_dict(), PATH)."
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"--pretrained-weights {path} is not a state_dict mapping names to tensors. "
            "Save the weights with torch.save(model.state_dict(), PATH)."
        )
    return state


def _load_strict(features: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load torchvision keys into the truncated network; the unused classifier (``fc.*``) is ignored."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = features.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched))
            if keys
        )
        raise CheckpointError(
            f"{source} does not match the backbone: {details}. "
            "Check --arch, and that the file holds a torchvision ResNet state_dict."
        )
    features.load_state_dict(state, strict=True)


def build_backbone(arch: str, *, pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    """The ResNet ``arch`` up to layer4 (frozen BatchNorm) and the channel width of its pooled output.

    ``weights_path`` takes precedence over ``pretrained``; without either, torchvision's random init
    (drawn from the global torch RNG, which the caller may fork and seed).
    """
    if arch not in SUPPORTED_ARCHS:
        raise ConfigError(f"--arch {arch} is not supported; choose one of {', '.join(SUPPORTED_ARCHS)}.")
    network = torchvision.models.get_model(arch, weights=None, norm_layer=FrozenBatchNorm2d)
    _use_small_map_convolutions(network)
    width = network.fc.in_features
    features = nn.Sequential(OrderedDict((name, getattr(network, name)) for name in _STAGES))
    if weights_path is not None:
        _load_strict(features, _read_weights_file(weights_path), f"--pretrained-weights {weights_path}")
    elif pretrained:
        _load_strict(features, _download_state_dict(arch), f"the ImageNet weights of {arch}")
    return features, width
