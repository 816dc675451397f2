"""One training epoch over a batch plan (METHOD.md §3.5, §3.6): forward, mine, loss, mask term, step.

The per-step path never waits for the device: skips are decided from host-side labels, losses are summed on
the device, and a non-finite loss is detected through a device-side flag read every ``check_every`` steps.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from lib.dist import DistContext, all_gather_rows
from lib.errors import UserFacingError
from lib.seeding import derive_seed, torch_generator
from metriclearning.regularizer import mask_regularizer


class NonFiniteLossError(UserFacingError):
    """The loss became NaN or infinite; the message says where and what to try."""


@dataclass
class EpochProgress:
    """Running sums of one epoch's record; saved in a mid-epoch checkpoint."""

    next_batch: int = 0
    n_trained: int = 0
    n_skipped: int = 0
    train_s: float = 0.0
    loss_metric_sum: float = 0.0
    loss_mask_sum: float = 0.0

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_state(cls, state: dict) -> "EpochProgress":
        return cls(**state)


@dataclass
class StepSetup:
    """Everything a training step needs besides the batch."""

    model: torch.nn.Module  # possibly DDP-wrapped
    masks: torch.nn.Module  # the unwrapped model's LearnerMasks
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    masking_lambda: float
    with_l1: bool
    seed: int
    dist: DistContext = field(default_factory=DistContext)
    debug_log: Callable[[str], None] | None = None  # --is-debug: where the first batch's diagnostics go


class _DeviceSums:
    """Device-side accumulators: no host synchronisation until they are read.

    Made with ``torch.full``, which fills on the device: ``torch.tensor(x, device="cuda")`` copies x from the host
    and waits for the copy.
    """

    def __init__(self, device: torch.device, metric: float, mask: float):
        # float64 and seeded with the saved partial sums: a resumed epoch adds the same numbers in the same order.
        self.metric = torch.full((), metric, dtype=torch.float64, device=device)
        self.mask = torch.full((), mask, dtype=torch.float64, device=device)
        self.bad_batch = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_learner = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, loss_metric, loss_mask, batch_index: int, learner_id: int) -> None:
        self.metric += loss_metric.detach()
        self.mask += loss_mask.detach()
        bad = ~torch.isfinite(loss_metric.detach() + loss_mask.detach()) & (self.bad_batch < 0)
        self.bad_batch = torch.where(bad, batch_index, self.bad_batch)
        self.bad_learner = torch.where(bad, learner_id, self.bad_learner)

    def first_bad(self) -> tuple[int, int] | None:
        batch = int(self.bad_batch)
        return None if batch < 0 else (batch, int(self.bad_learner))


def train_one_epoch(
    epoch: int,
    *,
    plan: list,
    loader,
    train_labels: np.ndarray,
    setup: StepSetup,
    full_embedding: bool,
    progress: EpochProgress,
    stop_requested,
    lrs: dict,
    check_every: int = 50,
    show_progress: bool = True,
) -> EpochProgress:
    """Train on ``plan[progress.next_batch:]``; returns early (with ``next_batch``) if a stop is requested."""
    sums = _DeviceSums(setup.device, progress.loss_metric_sum, progress.loss_mask_sum)
    model, criterion = setup.model, setup.criterion
    model.train()
    started = time.perf_counter()
    frozen_mask_term = None
    if full_embedding:
        with torch.no_grad():
            frozen_mask_term = mask_regularizer(setup.masks.stacked(), lam=setup.masking_lambda, with_l1=setup.with_l1)
    bar = tqdm(
        total=len(plan),
        initial=progress.next_batch,
        desc=f"epoch {epoch}",
        disable=not show_progress,
        leave=False,
        dynamic_ncols=True,
    )
    steps_since_check = 0
    batches = () if stop_requested() else loader  # a stop during the recluster: before the epoch's first step
    try:
        for batch in batches:
            index = batch.batch_index
            labels_np = train_labels[plan[index].indices]
            if not criterion.can_train_on(labels_np):
                progress.n_skipped += 1
            else:
                debug = setup.debug_log if progress.n_trained == 0 else None
                _train_step(batch, labels_np, setup, full_embedding, frozen_mask_term, sums, epoch, debug)
                progress.n_trained += 1
                steps_since_check += 1
            progress.next_batch = index + 1
            bar.update(1)
            if steps_since_check >= check_every:
                steps_since_check = 0
                _check_finite(sums, epoch, lrs)
                bar.set_postfix(loss=f"{float(sums.metric) / max(progress.n_trained, 1):.4f}")
            if stop_requested():
                break
    finally:
        bar.close()
    _check_finite(sums, epoch, lrs)
    progress.loss_metric_sum = float(sums.metric)
    progress.loss_mask_sum = float(sums.mask)
    progress.train_s += time.perf_counter() - started
    return progress


def _train_step(batch, labels_np, setup: StepSetup, full_embedding, frozen_mask_term, sums, epoch, debug=None) -> None:
    """One optimiser step; ``debug`` (a log function or None) gets the --is-debug report before the step."""
    index = batch.batch_index
    torch.manual_seed(derive_seed(setup.seed, "step", epoch, index))  # dropout: a function of the position
    images = batch.images.to(setup.device, non_blocking=True)
    if setup.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(labels_np)  # host labels: the miner sizes its work from them without a sync
    learner = None if full_embedding else batch.learner_id
    with torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None):
        embeddings = setup.model(images, learner)
    embeddings = all_gather_rows(embeddings.float(), setup.dist)
    generator = torch_generator(setup.seed, "miner", epoch, index, device=setup.device)
    loss_metric = setup.criterion(embeddings, labels, generator)
    if full_embedding:
        loss_mask = frozen_mask_term
        loss = loss_metric
    else:
        loss_mask = mask_regularizer(setup.masks.stacked(), lam=setup.masking_lambda, with_l1=setup.with_l1)
        loss = loss_metric + loss_mask
    sums.add(loss_metric, loss_mask, index, batch.learner_id)
    if debug is not None:
        debug(debug_report(epoch, index, learner, loss_metric.detach(), loss_mask.detach(), setup.masks.stacked()))
    setup.optimizer.zero_grad(set_to_none=True)
    if setup.scaler is not None:
        setup.scaler.scale(loss).backward()
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        loss.backward()
        setup.optimizer.step()


def debug_report(epoch: int, index: int, learner: int | None, loss_metric, loss_mask, masks: torch.Tensor) -> str:
    """--is-debug (METHOD.md §2.2): a batch's losses, its learner's mask L1 norm and the K x K matrix of |cos|
    between the ReLU'd masks (``masks``: K x D). Reads the device, so only for the first batch of an epoch."""
    with torch.no_grad():
        relu_masks = torch.relu(masks.detach().float())
        unit = relu_masks / relu_masks.norm(dim=1, keepdim=True).clamp(min=1e-12)
        cosines = (unit @ unit.T).abs().cpu().numpy()
    if learner is None:
        owner = "the full embedding"
    else:
        owner = f"learner {learner}, mask L1 {float(relu_masks[learner].sum()):.4f}"
    rows = "\n".join("  " + " ".join(f"{value:.3f}" for value in row) for row in cosines)
    return (
        f"debug epoch {epoch} batch {index} ({owner}): metric loss {float(loss_metric):.4f}, "
        f"mask term {float(loss_mask):.4f}; |cos| between the ReLU'd masks:\n{rows}"
    )


def _check_finite(sums: _DeviceSums, epoch: int, lrs: dict) -> None:
    bad = sums.first_bad()
    if bad is None:
        return
    batch, learner = bad
    rates = ", ".join(f"{name} {lr:.3g}" for name, lr in lrs.items())
    raise NonFiniteLossError(
        f"the loss became non-finite at epoch {epoch}, batch {batch} (learner {learner}); learning rates: {rates}. "
        "The last good checkpoint is kept. Try a lower --base-lr or --mask-lr-mult, or --amp off."
    )
