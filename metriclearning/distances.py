"""The two distance conventions of §5.1: a smooth one for losses, a clamped matrix for miners."""

import torch
from torch import Tensor

LOSS_EPS = 1e-8
MINER_MIN_SQUARED = 1e-4


def loss_distance(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise sqrt(||x - y||^2 + 1e-8): differentiable everywhere, also for identical rows."""
    difference = x - y
    return torch.sqrt((difference * difference).sum(dim=-1) + LOSS_EPS)


def _squared_distance_matrix(embeddings: Tensor) -> Tensor:
    """|e_i|^2 + |e_j|^2 - 2 e_i.e_j with one matrix product; may round slightly below 0."""
    squared_norms = (embeddings * embeddings).sum(dim=1)
    return torch.addmm(squared_norms[:, None] + squared_norms[None, :], embeddings, embeddings.T, alpha=-2.0)


def loss_distance_matrix(embeddings: Tensor) -> Tensor:
    """``loss_distance`` for all pairs at once, for losses that look at every pair (clamped at 0 first)."""
    return torch.sqrt(_squared_distance_matrix(embeddings).clamp(min=0.0) + LOSS_EPS)


def miner_distance_matrix(embeddings: Tensor) -> Tensor:
    """D_ij = sqrt(max(|e_i|^2 + |e_j|^2 - 2 e_i.e_j, 1e-4)), so D >= 0.01, the diagonal included."""
    return torch.sqrt(_squared_distance_matrix(embeddings).clamp(min=MINER_MIN_SQUARED))


def positive_mask(labels: Tensor) -> Tensor:
    """P_ij = [y_i == y_j] and i != j, as a bool matrix; replicas of one image are positives."""
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
