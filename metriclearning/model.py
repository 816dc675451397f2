"""The embedding network: frozen-BN backbone, pooling, dropout, linear head and learner masks (§4)."""

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.errors import ConfigError
from metriclearning.backbones import build_backbone
from metriclearning.masks import LearnerMasks

POOLINGS = ("avg", "max")
INIT_METHODS = (
    "pt_splitted",
    "xavier_uniform_<gain>",
    "xavier_normal_<gain>",
    "kaiming_normal_fan_in",
    "kaiming_normal_fan_out",
    "trunc_normal",
)


def normalize(x: Tensor) -> Tensor:
    """x / max(||x||_2, 1e-12) along the last dimension, computed in float32 even under autocast."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


def _reset_linear(layer: nn.Linear, generator: torch.Generator | None) -> None:
    """PyTorch's default Linear init, drawn from ``generator`` so the head depends only on the seed."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(layer.in_features)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def _chunk_initializer(init_method: str) -> Callable[..., Tensor] | None:
    """The per-chunk weight initializer of a chunked ``--init-method``, or None if it is not chunked."""
    for prefix, init in (("xavier_uniform_", nn.init.xavier_uniform_), ("xavier_normal_", nn.init.xavier_normal_)):
        if init_method.startswith(prefix):
            try:
                return partial(init, gain=float(init_method[len(prefix) :]))
            except ValueError:
                raise ConfigError(
                    f"--init-method {init_method}: the gain after '{prefix}' must be a number, e.g. {prefix}1."
                ) from None
    if init_method in ("kaiming_normal_fan_in", "kaiming_normal_fan_out"):
        mode = init_method.removeprefix("kaiming_normal_")
        return partial(nn.init.kaiming_normal_, mode=mode, nonlinearity="linear")
    return None


def check_init_method(init_method: str | None) -> None:
    """Raise ConfigError for an unknown ``--init-method`` (callable before anything is built)."""
    if init_method not in (None, "pt_splitted", "trunc_normal") and _chunk_initializer(init_method) is None:
        raise ConfigError(f"--init-method {init_method} is unknown; choose one of {', '.join(INIT_METHODS)}.")


def init_embedding(
    layer: nn.Linear, init_method: str | None, nb_clusters_final: int, generator: torch.Generator | None
) -> None:
    """Initialise the head per ``--init-method`` (§4.2); chunked inits work on ceil(D/K_final)-row blocks."""
    check_init_method(init_method)
    _reset_linear(layer, generator)
    if init_method in (None, "pt_splitted"):
        return
    with torch.no_grad():
        if init_method == "trunc_normal":
            nn.init.trunc_normal_(layer.weight, 0.0, 0.1, -0.2, 0.2, generator=generator)
            layer.bias.fill_(0.1)
            return
        init_chunk = _chunk_initializer(init_method)
        for chunk in torch.split(layer.weight, math.ceil(layer.out_features / nb_clusters_final)):
            init_chunk(chunk, generator=generator)


class EmbeddingModel(nn.Module):
    """Image → L2-normalised embedding, masked by a learner's mask during the divide stage (§4.3)."""

    def __init__(
        self,
        *,
        arch: str,
        sz_embedding: int,
        pooling: str = "avg",
        dropout: float = 0.01,
        init_method: str | None = None,
        nb_clusters_final: int = 1,
        n_masks: int = 1,
        masking_init: str = "ones",
        fixed_mask: bool = False,
        mask_relu: bool = True,
        masks_sum_for_full_emb: bool = False,
        masks_normalize_before_sum: str | None = None,
        pretrained: bool = False,
        pretrained_weights: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"--features-pooling {pooling} is unknown; choose one of {', '.join(POOLINGS)}.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"--dropout {dropout} is out of range; it must be in [0, 1).")
        if masks_normalize_before_sum is not None and not masks_sum_for_full_emb:
            raise ConfigError("--masks-normalize-before-sum needs --masks-sum-for-full-emb 1.")
        self.pooling = pooling
        self.mask_relu = mask_relu
        self.masks_sum_for_full_emb = masks_sum_for_full_emb
        self.masks_normalize_before_sum = masks_normalize_before_sum
        # torchvision's random init uses the global RNG: fork it, seeded from ``generator``.
        backbone_seed = None if generator is None else int(torch.randint(2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[], enabled=backbone_seed is not None):
            if backbone_seed is not None:
                torch.manual_seed(backbone_seed)
            self.backbone, width = build_backbone(arch, pretrained=pretrained, weights_path=pretrained_weights)
        self.dropout = nn.Dropout(dropout)
        self.embedding = nn.Linear(width, sz_embedding)
        init_embedding(self.embedding, init_method, nb_clusters_final, generator)
        self.masks = LearnerMasks(sz_embedding, n_masks, init=masking_init, fixed=fixed_mask, generator=generator)

    def pooled(self, images: Tensor) -> Tensor:
        """The flattened globally pooled backbone feature map (before dropout)."""
        features = self.backbone(images)
        if self.pooling == "avg":
            return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)
        return torch.flatten(F.adaptive_max_pool2d(features, 1), 1)

    def penultimate(self, images: Tensor) -> Tensor:
        """normalize(pooled features): the default clustering features; dropout is never applied here."""
        return normalize(self.pooled(images))

    def forward(self, images: Tensor, learner_id: int | None = None) -> Tensor:
        """normalize(z ⊙ g(m_k)) for learner k; without an id normalize(z), or normalize(z ⊙ Σ h(m)) (§4.3)."""
        z = self.embedding(self.dropout(self.pooled(images)))
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            if learner_id is not None:
                z = self.masks.apply_mask(z, learner_id, relu=self.mask_relu)
            elif self.masks_sum_for_full_emb:
                z = z * self.masks.summed(relu=self.mask_relu, normalize=self.masks_normalize_before_sum)
            return normalize(z)
