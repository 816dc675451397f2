"""Device parameters for tests: CUDA cases carry the ``cuda`` marker and are skipped where there is no GPU."""

import pytest
import torch

real_cuda_available = torch.cuda.is_available  # tests/conftest.py hides CUDA from unmarked tests

NO_CUDA = "needs a CUDA device; benchmarks/gpu_check.sh runs the cuda-marked tests on a GPU machine"
CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not real_cuda_available(), reason=NO_CUDA))


def cuda_only(test):
    """Decorator: a test that runs only with a GPU."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


def on_cuda(*values, name: str | None = None):
    """A parametrize case that runs only with a GPU."""
    return pytest.param(*values, marks=CUDA_MARKS, id=name)


def skip_without_faiss_gpu() -> None:
    from lib.faiss_backend import faiss_gpu_count

    if faiss_gpu_count() == 0:
        pytest.skip("needs a GPU build of faiss (faiss-gpu-cu12, or faiss-cuda==1.14.1.post4 for CUDA 13)")
