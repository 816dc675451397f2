"""Data loaders: ONE training DataLoader serving the cluster-aware batch plan, and a sequential eval loader.

Each training item is a whole planned batch, loaded and stacked in a worker, so the number of worker
processes never grows with K (METHOD §3.6, §10 #26). Every image's augmentation seed is a function of
(run seed, epoch, batch index, position in the batch), so batches do not depend on worker scheduling,
and a resumed epoch or another rank reproduces them exactly.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dataset.cluster_sampler import PlannedBatch
from lib.seeding import derive_seed, torch_generator


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor  # int64
    indices: torch.Tensor  # int64 training-set indices
    learner_id: int
    batch_index: int  # position in the epoch's plan

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pin-memory thread for custom batch types."""
        return Batch(
            self.images.pin_memory(),
            self.labels.pin_memory(),
            self.indices.pin_memory(),
            self.learner_id,
            self.batch_index,
        )


def rank_share(length: int, rank: int, world_size: int) -> slice:
    """The contiguous part of a batch of ``length`` images that ``rank`` loads (equal when divisible)."""
    return slice(length * rank // world_size, length * (rank + 1) // world_size)


class _PlannedBatches(Dataset):
    """Item b is batch b of the plan, this rank's share of it, loaded with per-position augmentation seeds."""

    def __init__(self, dataset, plan: list[PlannedBatch], *, seed: int, epoch: int, rank: int, world_size: int):
        self.dataset = dataset
        self.plan = plan
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, batch_index: int) -> Batch:
        planned = self.plan[batch_index]
        share = rank_share(len(planned.indices), self.rank, self.world_size)
        positions = range(len(planned.indices))[share]
        items = [
            self.dataset[(int(planned.indices[j]), derive_seed(self.seed, "aug", self.epoch, batch_index, j))]
            for j in positions
        ]
        images, labels, indices = zip(*items, strict=True)
        return Batch(
            images=torch.stack(images),
            labels=torch.as_tensor(np.asarray(labels, dtype=np.int64)),
            indices=torch.as_tensor(np.asarray(indices, dtype=np.int64)),
            learner_id=planned.learner_id,
            batch_index=batch_index,
        )


def make_train_loader(
    dataset,
    plan: list[PlannedBatch],
    *,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    num_workers: int,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterable[Batch]:
    """Batches start_batch… of the plan, in plan order. ``dataset[(index, aug_seed)]`` → (image, label, index)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if not 0 <= start_batch <= len(plan):
        raise ValueError(f"start batch {start_batch} is outside the epoch's plan of {len(plan)} batches")
    if any(len(planned.indices) < world_size for planned in plan):
        raise ValueError(f"every planned batch must hold at least world_size = {world_size} images")
    return DataLoader(
        _PlannedBatches(dataset, plan, seed=seed, epoch=epoch, rank=rank, world_size=world_size),
        batch_size=None,
        sampler=range(start_batch, len(plan)),
        num_workers=num_workers,
        pin_memory=pin_memory,
        # The loader draws a base seed at every iteration; a private generator keeps the global torch RNG
        # (dropout, resume) untouched.
        generator=torch_generator(seed, "train-loader", epoch),
    )


def make_eval_loader(dataset, *, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Sequential batches in index order, yielding (images, labels, indices)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch_generator(0, "eval-loader"),
    )
