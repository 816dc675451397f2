"""Torchvision ResNet backbones cut after layer4, with permanently frozen BatchNorm statistics.

BatchNorm stays in eval mode because metric-learning batches are small and single-cluster: batch
statistics would be noisy and biased, so the ImageNet running statistics are kept (§4.1).
"""

import os
import pickle
from collections import OrderedDict
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from lib.errors import CheckpointError, ConfigError

SUPPORTED_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics and never updates them.

    Only ``train()`` is overridden, so the state-dict keys equal torchvision's and ImageNet weights load
    unchanged; the affine weight and bias stay trainable.
    """

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        return super().train(False)


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
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(
            f"--pretrained-weights {path} could not be loaded as a tensors-only state_dict "
            f"(weights_only=True): {error}. Save the weights with torch.save(model.state_dict(), PATH)."
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
    width = network.fc.in_features
    features = nn.Sequential(OrderedDict((name, getattr(network, name)) for name in _STAGES))
    if weights_path is not None:
        _load_strict(features, _read_weights_file(weights_path), f"--pretrained-weights {weights_path}")
    elif pretrained:
        _load_strict(features, _download_state_dict(arch), f"the ImageNet weights of {arch}")
    return features, width
