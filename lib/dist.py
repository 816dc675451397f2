"""torchrun helpers that are no-ops in a single process, so the training code reads the same either way."""

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist

from lib.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(cuda_device: int) -> tuple[DistContext, torch.device]:
    """Join the torchrun process group when launched by torchrun; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if not torch.cuda.is_available():
            return DistContext(), torch.device("cpu")
        count = torch.cuda.device_count()
        if cuda_device >= count:
            raise ConfigError(
                f"--cuda-device {cuda_device} does not exist: this machine has {count} CUDA device(s), numbered "
                f"0 to {count - 1}; pick one of them (under torchrun each process takes its LOCAL_RANK instead)."
            )
        return DistContext(), torch.device(f"cuda:{cuda_device}")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device(f"cuda:{local_rank}"), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank), device


def all_gather_rows(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Every rank's rows in rank order, differentiably.

    Each rank then computes the same loss over the whole batch. The backward sums the gradients of all ranks
    into each rank's own rows (world_size x its share of the gradient), and DDP's averaging over ranks divides
    that back: the parameter gradients equal those of one process with the whole batch, without any loss scaling.
    """
    if not context.distributed:
        return tensor
    return _GatherRows.apply(tensor)


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's equally many rows; the backward hands each rank the sum over ranks of the
    gradients of its own rows. Written out because torch.distributed.nn's all_gather is deprecated."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(torch_dist.get_world_size())]
        torch_dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(summed)
        return summed.chunk(torch_dist.get_world_size(), dim=0)[torch_dist.get_rank()]


def all_reduce_sum_array(array: np.ndarray, context: DistContext, device: torch.device) -> np.ndarray:
    """Element-wise sum of a NumPy array over ranks (features extracted in shards, zeros elsewhere)."""
    if not context.distributed:
        return array
    tensor = torch.from_numpy(array).to(device)
    torch_dist.all_reduce(tensor)
    return tensor.cpu().numpy()


@functools.cache
def _control_group():
    """A gloo group for host-side flags, so agreeing on a stop never synchronises the GPU."""
    return torch_dist.new_group(backend="gloo")


def any_rank(flag: bool, context: DistContext) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a preemption signal seen by one of them)."""
    if not context.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    torch_dist.all_reduce(value, group=_control_group())
    return bool(value.item())


def broadcast_object(value, context: DistContext):
    """Rank 0's ``value`` on every rank."""
    if not context.distributed:
        return value
    holder = [value]
    torch_dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(context: DistContext) -> None:
    if context.distributed:
        torch_dist.barrier()


def shutdown(context: DistContext) -> None:
    if context.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
