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


def cpu_times() -> tuple[int, int] | None:
    """(stolen, total) CPU ticks of the whole machine so far, from Linux's /proc/stat; None elsewhere.

    On a virtual machine the hypervisor can take a core away (steal); a round measured under steal is not
    comparable with a quiet one, and steal slows multi-threaded code with barriers more than the rest.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (ticks[7] if len(ticks) == 8 else 0), sum(ticks)


def steal_fraction(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """Fraction of the machine's CPU time stolen between two ``cpu_times`` readings."""
    if start is None or end is None or end[1] == start[1]:
        return None
    return round((end[0] - start[0]) / (end[1] - start[1]), 3)


def emit(report: dict, out: Path | None = None) -> None:
    """Print the report as one JSON object, and also write it to ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
