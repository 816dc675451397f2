"""The environment report recorded with every run (METHOD.md §9.2 ``env.json``)."""

import importlib
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

from lib.faiss_backend import describe_faiss

_PACKAGES = {
    "torchvision": "torchvision",
    "albumentations": "albumentations",
    "numpy": "numpy",
    "scipy": "scipy",
    "scikit-learn": "sklearn",
    "opencv": "cv2",
    "pillow": "PIL",
    "matplotlib": "matplotlib",
}


def _version(module_name: str) -> str | None:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", "unknown"))


def git_state(repo: Path) -> dict:
    """Commit hash and dirty flag of the code that ran, or None outside a git checkout."""

    def run(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment_report() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        **{name: _version(module) for name, module in _PACKAGES.items()},
        "faiss": describe_faiss(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu_count": os.cpu_count(),
        "os": platform.platform(),
        "hostname": socket.gethostname(),
        "git": git_state(Path(__file__).resolve().parent.parent),
    }
