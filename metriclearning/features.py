"""Embedding a whole dataset in eval mode: clustering features and evaluation embeddings.

The loader yields ``(images, labels, indices)``; rows come back ordered by dataset index.
"""

from collections.abc import Iterable

import numpy as np
import torch

MODES = ("embedding", "penultimate")


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    mode: str = "embedding",
    n_items: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Features of every item of ``loader`` as a float32 (n_items, d) array in dataset-index order.

    Rows of items the loader does not yield stay zero, so shards extracted by several processes add up.

    ``mode='embedding'`` is the evaluation embedding (no learner id, mask-sum if enabled);
    ``mode='penultimate'`` the L2-normalised pooled backbone vector used for clustering.
    """
    if mode not in MODES:
        raise ValueError(f"unknown feature mode {mode!r}")
    was_training = model.training
    model.eval()
    output: np.ndarray | None = None
    try:
        for images, _, indices in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                values = model.penultimate(images) if mode == "penultimate" else model(images)
            values = values.float().cpu().numpy()
            if output is None:
                output = np.zeros((n_items, values.shape[1]), dtype=np.float32)
            output[np.asarray(indices, dtype=np.int64)] = values
    finally:
        model.train(was_training)
    if output is None:
        raise ValueError("cannot extract features of an empty dataset")
    return output
