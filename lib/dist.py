"""torchrun helpers that are no-ops in a single process, so the training code reads the same either way."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


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
        device = torch.device(f"cuda:{cuda_device}") if torch.cuda.is_available() else torch.device("cpu")
        return DistContext(), device
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
    """Concatenate every rank's rows in rank order; gradients flow to this rank's own rows."""
    if not context.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(context.world_size)]
    torch_dist.all_gather(parts, tensor.detach().contiguous())
    parts[context.rank] = tensor
    return torch.cat(parts, dim=0)


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
