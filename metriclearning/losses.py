"""Metric losses of §5.2 and §5.5. Triplet-consuming losses take the (a, p, n) indices of any miner; the
others see the whole batch. Every distance is d(x, y) = sqrt(||x - y||^2 + 1e-8) (§5.1, §10 #48).

All reductions divide by counts that stay on the device (clamped at 1), so no loss synchronises.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metriclearning.distances import loss_distance, loss_distance_matrix, positive_mask

Triplets = tuple[Tensor, Tensor, Tensor]


def _triplet_distances(embeddings: Tensor, triplets: Triplets) -> Tensor:
    """(2, T): d(a, p) in row 0 and d(a, n) in row 1; index_select, whose backward is cheaper than indexing."""
    anchors, positives, negatives = triplets
    others = embeddings.index_select(0, torch.cat((positives, negatives))).view(
        2, anchors.shape[0], embeddings.shape[1]
    )
    return loss_distance(embeddings.index_select(0, anchors), others)


def _mean_of_active(values: Tensor) -> Tensor:
    """Mean over the entries > 0, or 0 when there are none (still attached to the graph)."""
    return values.sum() / (values > 0).sum().clamp(min=1)


class MarginLoss(nn.Module):
    """Margin loss (Wu et al. 2017) with an optional class-specific, learnable boundary beta (§5.2).

    n_classes=None gives one scalar beta; otherwise one entry per training class, indexed by the anchor's
    label. nu weights an L1 penalty on beta and is 0 in this project (kept so the formula stays whole).
    """

    def __init__(
        self,
        margin: float = 0.2,
        beta: float = 1.2,
        n_classes: int | None = None,
        learnable_beta: bool = False,
        nu: float = 0.0,
    ) -> None:
        super().__init__()
        self.margin = margin
        self.nu = nu
        self.class_specific = n_classes is not None
        # +1 turns d(a, p) - beta into the positive term, -1 turns d(a, n) - beta into the negative one
        self.register_buffer("signs", torch.tensor([[1.0], [-1.0]]), persistent=False)
        initial = torch.full((n_classes,) if self.class_specific else (), float(beta))
        if learnable_beta:
            self.beta = nn.Parameter(initial)
        else:
            self.register_buffer("beta", initial)

    def forward(self, embeddings: Tensor, labels: Tensor, triplets: Triplets) -> Tensor:
        beta_rows = self.beta[labels[triplets[0]]] if self.class_specific else self.beta
        terms = F.relu((_triplet_distances(embeddings, triplets) - beta_rows) * self.signs + self.margin)
        active = (terms > 0).sum()
        total = terms.sum()
        if self.nu:
            total = torch.where(active > 0, total + self.nu * beta_rows.abs().sum(), 0.0)
        return total / active.clamp(min=1)


class TripletLoss(nn.Module):
    """Hinge (or softplus with ``soft``) on d_ap - d_an, averaged over the triplets with a non-zero term."""

    def __init__(self, margin: float = 0.2, soft: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.soft = soft

    def forward(self, embeddings: Tensor, labels: Tensor, triplets: Triplets) -> Tensor:
        anchor_positive, anchor_negative = _triplet_distances(embeddings, triplets)
        difference = anchor_positive - anchor_negative
        terms = F.softplus(difference) if self.soft else F.relu(difference + self.margin)
        return _mean_of_active(terms)


class TripletSemihardLoss(nn.Module):
    """Every ordered positive pair (a, p) with the closest negative farther than p, else the farthest one.

    Negatives range over other classes only (§10 #43); pairs whose anchor has no negative are left out of
    the mean. The negative is chosen per anchor with a sort and a batched binary search, not a B^3 tensor.
    """

    def __init__(self, margin: float = 0.2, soft: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.soft = soft

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        distances = loss_distance_matrix(embeddings)
        positives = positive_mask(labels)
        negatives = labels[:, None] != labels[None, :]
        with torch.no_grad():
            negative_distances = torch.where(negatives, distances, torch.inf)
            sorted_distances, order = negative_distances.sort(dim=1)
            first_farther = torch.searchsorted(sorted_distances, distances.contiguous(), right=True)
            farthest = (negatives.sum(dim=1, keepdim=True) - 1).clamp(min=0)
            rank = torch.minimum(first_farther, farthest)
            chosen = order.gather(1, rank)
        anchor_negative = distances.gather(1, chosen)
        difference = distances - anchor_negative
        terms = F.softplus(difference) if self.soft else F.relu(difference + self.margin)
        valid = positives & negatives.any(dim=1, keepdim=True)
        return torch.where(valid, terms, 0.0).sum() / valid.sum().clamp(min=1)


class TripletAllLoss(nn.Module):
    """Hinge over every valid (a, p, n) of the batch, zeros included in the mean (§5.5, §10 #43)."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        distances = loss_distance_matrix(embeddings)
        positives = positive_mask(labels)
        negatives = labels[:, None] != labels[None, :]
        valid = positives[:, :, None] & negatives[:, None, :]
        terms = F.relu(distances[:, :, None] - distances[:, None, :] + self.margin)
        return torch.where(valid, terms, 0.0).sum() / valid.sum().clamp(min=1)


class NPairsLoss(nn.Module):
    """Soft-target cross-entropy over scaled similarities, the diagonal excluded; rows without positives
    are dropped. The scale alpha is a parameter when ``learnable`` (its LR is --lr-alpha)."""

    def __init__(self, alpha: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        initial = torch.tensor(float(alpha))
        if learnable:
            self.alpha = nn.Parameter(initial)
        else:
            self.register_buffer("alpha", initial)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        size = embeddings.shape[0]
        eye = torch.eye(size, dtype=torch.bool, device=embeddings.device)
        logits = (self.alpha * (embeddings @ embeddings.T)).masked_fill(eye, -torch.inf)
        log_probabilities = F.log_softmax(logits, dim=1)
        positives = positive_mask(labels)
        counts = positives.sum(dim=1)
        row_losses = -torch.where(positives, log_probabilities, 0.0).sum(dim=1) / counts.clamp(min=1)
        return row_losses.sum() / (counts > 0).sum().clamp(min=1)
