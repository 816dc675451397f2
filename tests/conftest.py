"""Tests run on the CPU unless marked ``cuda``, so that a GPU workstation gives the results CI gives (bit-exact
resume, CPU-only settings); the cuda-marked tests get the GPU. ``pytest -m cuda tests`` runs only those:
benchmarks/gpu_check.sh does so on a GPU machine. Subprocess tests hide CUDA through their environment. CUDA is
shown to a marked test by a function-scoped fixture, so module- or session-scoped fixtures are always built
without it: a cuda-marked test must not rely on one for anything that should run on the GPU."""

import pytest
import torch

from tests.devices import real_cuda_available


@pytest.fixture(autouse=True, scope="session")
def _cpu_unless_marked():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        yield


@pytest.fixture(autouse=True)
def _cuda_when_marked(request):
    if request.node.get_closest_marker("cuda") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", real_cuda_available)
        yield
