"""The training criterion: an optional in-batch miner plus a loss, the skip rule of §3.5 and the loss's
own optimizer group (§5.6). This is the one object the training loop calls per batch."""

import numpy as np
import torch
from torch import Tensor, nn

from lib.errors import ConfigError
from metriclearning.losses import MarginLoss, NPairsLoss, TripletAllLoss, TripletLoss, TripletSemihardLoss
from metriclearning.miners import LabelStats, Miner, build_miner

CRITERION_NAMES = ("MarginLoss", "TripletLoss", "TripletSemihardLoss", "TripletAllLoss", "NPairsLoss")
MINED_CRITERIA = ("MarginLoss", "TripletLoss")
SOFT_CRITERIA = ("TripletLoss", "TripletSemihardLoss")  # --soft-loss applies to these only


class Criterion(nn.Module):
    """Miner (for MarginLoss/TripletLoss) + loss, always evaluated in float32.

    Labels may be given on the CPU (recommended: the miner then sizes its output on the host and never
    synchronises, see metriclearning.miners) or on the embeddings' device.
    """

    def __init__(self, loss: nn.Module, miner: Miner | None = None, loss_lr: float = 0.0) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.loss_lr = loss_lr

    def forward(self, embeddings: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        device = embeddings.device
        with torch.autocast(device_type=device.type, enabled=False):
            embeddings = embeddings.float()
            device_labels = labels.to(device, non_blocking=True)
            if self.miner is None:
                return self.loss(embeddings, device_labels)
            triplets = self.miner(embeddings.detach(), labels, generator)
            return self.loss(embeddings, device_labels, triplets)

    def can_train_on(self, labels: np.ndarray) -> bool:
        """§3.5 from host labels only: False means skip the batch (no forward, no step, count it)."""
        stats = LabelStats.from_labels(np.asarray(labels))
        has_negative = stats.negatives >= 1  # any sample with a negative <=> at least 2 classes
        if self.miner is not None:
            return not self.miner.skips_single_class_batches or bool(has_negative.any())
        return bool(((stats.positives >= 1) & has_negative).any())

    def loss_parameter_group(self) -> dict | None:
        """The optional third optimizer group: learnable beta or NPairs alpha, weight decay 0."""
        params = [parameter for parameter in self.loss.parameters() if parameter.requires_grad]
        if not params:
            return None
        return {"name": "loss", "params": params, "lr": self.loss_lr, "weight_decay": 0.0}


def build_criterion(
    name: str,
    *,
    margin: float,
    sampler: str,
    soft_loss: bool,
    lr_beta: float,
    n_train_classes: int,
    alpha: float,
    lr_alpha: float,
) -> Criterion:
    """The criterion of ``--criterion NAME``; --sampler only matters for MarginLoss and TripletLoss."""
    if name == "KantorovMarginLoss":
        raise ConfigError(
            "--criterion KantorovMarginLoss is not supported by this implementation; "
            f"choose one of: {', '.join(CRITERION_NAMES)}."
        )
    if name not in CRITERION_NAMES:
        raise ConfigError(f"--criterion {name!r} is not supported; choose one of: {', '.join(CRITERION_NAMES)}.")
    miner = build_miner(sampler, margin=margin)
    if name == "MarginLoss":
        learnable = lr_beta > 0
        loss = MarginLoss(margin=margin, n_classes=n_train_classes if learnable else None, learnable_beta=learnable)
        return Criterion(loss, miner, loss_lr=lr_beta)
    if name == "TripletLoss":
        return Criterion(TripletLoss(margin=margin, soft=soft_loss), miner)
    if name == "TripletSemihardLoss":
        return Criterion(TripletSemihardLoss(margin=margin, soft=soft_loss))
    if name == "TripletAllLoss":
        return Criterion(TripletAllLoss(margin=margin))
    return Criterion(NPairsLoss(alpha=alpha, learnable=lr_alpha > 0), loss_lr=lr_alpha)
