"""Lazy access to faiss, so that importing the project never requires it and the log can say which build runs.

faiss-cpu comes from requirements.txt. On GPU machines install a GPU build that matches the CUDA version
(``GPU_BUILDS``); ``--backend faiss-gpu`` then runs k-means and kNN on the GPU.
"""

import functools

from lib.errors import ConfigError

# PyPI's GPU builds: faiss-gpu-cu12 (faiss' own, CUDA 12) and faiss-cuda 1.14.1.post4 (third-party, CUDA 13;
# its later releases are built for CUDA 12.8)
GPU_BUILDS = "`pip install faiss-gpu-cu12` for CUDA 12, `pip install faiss-cuda==1.14.1.post4` for CUDA 13"
FAISS_MISSING = (
    "faiss is not installed. Install faiss-cpu (`pip install faiss-cpu`), or on a GPU machine a GPU build that "
    f"matches your CUDA version ({GPU_BUILDS}), or use `--backend torch+sklearn`."
)


@functools.cache
def import_faiss():
    """Import faiss once, with a readable error when it is missing."""
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ConfigError(FAISS_MISSING) from error
    return faiss


def faiss_available() -> bool:
    try:
        import_faiss()
    except ConfigError:
        return False
    return True


def faiss_gpu_count() -> int:
    """Number of GPUs the installed faiss build can use (0 for CPU-only builds or no GPU)."""
    if not faiss_available():
        return 0
    faiss = import_faiss()
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def describe_faiss() -> str:
    """One line for logs and env.json: version and whether it has GPU support."""
    if not faiss_available():
        return "faiss: not installed"
    faiss = import_faiss()
    gpus = faiss_gpu_count()
    kind = f"GPU build, {gpus} GPU(s) visible" if gpus else "CPU build"
    return f"faiss {getattr(faiss, '__version__', '?')} ({kind})"


def require_faiss_gpu() -> None:
    """Fail early with the fix when ``--backend faiss-gpu`` cannot work here."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--backend faiss-gpu needs CUDA, and no CUDA device is available. Use --backend faiss.")
    if faiss_gpu_count() == 0:
        raise ConfigError(
            "--backend faiss-gpu needs a GPU build of faiss, but the installed faiss has no GPU support. "
            f"Uninstall faiss-cpu and install one matching your CUDA ({GPU_BUILDS}), or use --backend faiss."
        )
