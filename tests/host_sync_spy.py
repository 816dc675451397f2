"""A spy for calls that make the host wait for the device, for tests run on the CPU.

On a GPU, ``.item()``, ``.cpu()``, ``bool()`` of a tensor and friends block until the device has caught up. On
the CPU they cost nothing, so a CPU test cannot time them; it can only see that they are called.
"""

from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

_SYNCING = {
    torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.nonzero,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
}  # fmt: skip


class HostReadSpy(TorchFunctionMode):
    """Records every call that would make the host wait for the device, except on tensors ``on_host`` accepts
    (the labels, which the training step takes from the host-side batch plan and never from the device)."""

    def __init__(self, on_host: Callable[[torch.Tensor], bool]):
        super().__init__()
        self.on_host = on_host
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING:
            subject = args[0] if args else None
            if not (isinstance(subject, torch.Tensor) and self.on_host(subject)):
                self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


def same_storage(tensor: torch.Tensor) -> Callable[[torch.Tensor], bool]:
    """``on_host`` for one given tensor: views of its storage."""
    pointer = tensor.untyped_storage().data_ptr()
    return lambda other: other.untyped_storage().data_ptr() == pointer
