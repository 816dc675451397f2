"""Mask orthogonality regulariser of §5.3: pushes learners towards different embedding dimensions."""

import torch
import torch.nn.functional as F
from torch import Tensor


def mask_regularizer(masks: Tensor, *, lam: float, with_l1: bool) -> Tensor:
    """lam * mean pairwise cosine of relu(masks) over i != j (+ lam * mean L1 norm with ``with_l1``).

    ReLU is applied whatever --mask-relu says. One K x K matrix product replaces the pair loop; for K = 1
    the pair term is an exact 0 that is still attached to the masks, so callers need no special case.
    Runs in float32 even inside an autocast region.
    """
    with torch.autocast(device_type=masks.device.type, enabled=False):
        rectified = F.relu(masks.float())
        count = rectified.shape[0]
        norms = rectified.norm(dim=1)
        cosine = (rectified @ rectified.T) / (norms[:, None] * norms[None, :]).clamp(min=1e-8)
        off_diagonal = ~torch.eye(count, dtype=torch.bool, device=masks.device)
        orthogonality = torch.where(off_diagonal, cosine, 0.0).sum() / max(count * (count - 1), 1)
        loss = lam * orthogonality
        if with_l1:
            loss = loss + lam * rectified.sum(dim=1).mean()
        return loss
