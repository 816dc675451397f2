"""The whole training step waits for the device only at the once-per-``check_every`` loss check (issue 6).

The real model (masks, dropout, BatchNorm), criterion, regulariser, fused Adam, in fp32 and under bf16 autocast.
On the CPU a spy sees every call that would make a GPU run wait (``.item()``, ``bool()`` of a tensor, ...); on a
GPU, CUDA's own synchronisation detector also counts the waits that happen inside PyTorch's kernels.
"""

import contextlib
import warnings

import numpy as np
import pytest
import torch

from dataset.cluster_sampler import PlannedBatch
from dataset.loader import Batch
from experiment.epoch import EpochProgress, StepSetup, train_one_epoch
from lib.seeding import torch_generator
from metriclearning.criteria import build_criterion
from metriclearning.model import EmbeddingModel
from metriclearning.optim import OptimSettings, build_optimizer
from tests.devices import on_cuda
from tests.host_sync_spy import HostReadSpy

BATCH = 8
STEPS = 7
CHECK_EVERY = 3


@contextlib.contextmanager
def cuda_waits(device: torch.device):
    """The synchronising CUDA operations run inside the block, as warning messages (none on the CPU)."""
    if device.type != "cuda":
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        waits: list[str] = []
        try:
            yield waits
        finally:
            torch.cuda.set_sync_debug_mode("default")
            waits += [str(w.message) for w in caught if "called a synchronizing CUDA operation" in str(w.message)]


@pytest.mark.parametrize("device", ["cpu", on_cuda("cuda")])
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_training_steps_read_the_device_only_at_the_periodic_check(device, amp_dtype):
    device = torch.device(device)
    model = EmbeddingModel(
        arch="resnet18", sz_embedding=16, nb_clusters_final=2, n_masks=2, generator=torch_generator(0, "init")
    ).to(device)
    criterion = build_criterion(
        "MarginLoss", margin=0.2, sampler="distanceweighted", soft_loss=False, lr_beta=0.0, n_train_classes=4,
        alpha=1.0, lr_alpha=0.0,
    ).to(device)  # fmt: skip
    optimizer = build_optimizer(model, OptimSettings(mask_lr_mult=10.0), criterion.loss_parameter_group())
    assert all(group.get("fused") for group in optimizer.param_groups)  # the fast path the training uses
    setup = StepSetup(
        model=model, masks=model.masks, criterion=criterion, optimizer=optimizer, scaler=None, device=device,
        amp_dtype=amp_dtype, channels_last=amp_dtype is not None, masking_lambda=0.01, with_l1=False, seed=0,
    )  # fmt: skip
    labels = np.repeat(np.arange(BATCH // 2), 2)
    plan = [PlannedBatch(learner_id=step % 2, indices=np.arange(BATCH)) for step in range(STEPS)]
    images = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if device.type == "cuda":
        images = images.pin_memory()  # as the training loader delivers them
    loader = [Batch(images, torch.from_numpy(labels), torch.arange(BATCH), p.learner_id, i) for i, p in enumerate(plan)]

    def is_batch_labels(tensor: torch.Tensor) -> bool:  # taken from the host-side plan, never from the device
        return tensor.dtype == torch.int64 and tensor.shape == (BATCH,) and tensor.device.type == "cpu"

    with HostReadSpy(is_batch_labels) as spy, cuda_waits(device) as waits:
        progress = train_one_epoch(
            0, plan=plan, loader=loader, train_labels=labels, setup=setup, full_embedding=False,
            progress=EpochProgress(), stop_requested=lambda: False, lrs={"backbone": 1e-5},
            check_every=CHECK_EVERY, show_progress=False,
        )  # fmt: skip

    assert progress.n_trained == STEPS and np.isfinite(progress.loss_metric_sum)
    periodic = ["__int__", "__float__"]  # the non-finite flag, the loss for the progress bar
    end_of_epoch = ["__int__", "__float__", "__float__"]  # the flag and the two loss sums of the record
    expected = periodic * (STEPS // CHECK_EVERY) + end_of_epoch
    assert spy.calls == expected
    if device.type == "cuda":
        assert len(waits) == len(expected), waits
