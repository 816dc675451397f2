"""What every benchmark reports besides its measurements: the machine, and the JSON output itself."""

import json
import os
import platform
from pathlib import Path

import torch


def machine_info(device: torch.device | None = None, **extra: object) -> dict:
    """Platform, cores, load and versions (``extra``: the benchmark's own libraries and settings), plus the GPU
    and CUDA version when ``device`` is CUDA: the context a ratio was measured in."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **extra,
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def emit(report: dict, out: Path | None = None) -> None:
    """Print the report as one JSON object, and also write it to ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
