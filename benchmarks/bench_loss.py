"""Per-batch cost of the default SOP criterion: distance-weighted miner + margin loss, forward + backward.

Measures the median wall time at 80 x 512 (S = 2, the SOP preset; also S = 4) and 320 x 512 on the CPU,
and on CUDA when available (synchronising only around each timed iteration). Wall time (`ms_*`) is the
headline; on a shared CPU the thread's CPU time (`cpu_ms_*`) is reported too. The time of the bare
pairwise-distance matrix at both sizes is measured in the same run as the reference for how the full
step scales: a 4x larger batch means 16x more pairwise work.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_loss.py
    .venv/bin/python benchmarks/bench_loss.py --threads 2 --repeats 200 --out bench_loss.json
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import emit  # noqa: E402
from metriclearning.criteria import build_criterion  # noqa: E402
from metriclearning.distances import miner_distance_matrix  # noqa: E402

DIM = 512


def median_ms(step: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> tuple[float, float]:
    """Median wall time and median CPU time of this thread for ``step``, in ms.

    On CUDA the device is synchronised before and after each call, so wall time covers the kernels. On a
    shared CPU the thread's CPU time is the steadier number: it leaves out the time slices other
    processes got while the step waited.
    """
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start_wall, start_cpu = time.perf_counter(), time.thread_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall.append((time.perf_counter() - start_wall) * 1e3)
        cpu.append((time.thread_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def criterion_step(batch: int, samples_per_class: int, device: torch.device) -> Callable[[], None]:
    """One forward + backward of MarginLoss with distance-weighted mining on L2-normalised embeddings (the
    normalisation belongs to the model), labels handed over on the CPU as the training loop does."""
    criterion = build_criterion(
        "MarginLoss",
        margin=0.2,
        sampler="distanceweighted",
        soft_loss=False,
        lr_beta=0.0,
        n_train_classes=batch // samples_per_class,
        alpha=1.0,
        lr_alpha=0.0,
    ).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    embeddings = F.normalize(torch.randn(batch, DIM, generator=generator, device=device), dim=1)
    embeddings.requires_grad_(True)
    labels = torch.arange(batch // samples_per_class).repeat_interleave(samples_per_class)

    def step() -> None:
        embeddings.grad = None
        criterion(embeddings, labels, generator).backward()

    return step


def pairwise_step(batch: int, device: torch.device) -> Callable[[], None]:
    embeddings = F.normalize(torch.randn(batch, DIM, device=device), dim=1)
    return lambda: miner_distance_matrix(embeddings)


def measure(device: torch.device, repeats: int, warmup: int) -> dict:
    steps = {
        "80x512": criterion_step(80, 2, device),
        "80x512_s4": criterion_step(80, 4, device),
        "320x512": criterion_step(320, 2, device),
    }
    result: dict = {"device": str(device)}
    for name, step in steps.items():
        result[f"ms_{name}"], result[f"cpu_ms_{name}"] = median_ms(step, device, repeats, warmup)
    for batch in (80, 320):
        wall, cpu = median_ms(pairwise_step(batch, device), device, repeats, warmup)
        result[f"pairwise_ms_{batch}x512"], result[f"pairwise_cpu_ms_{batch}x512"] = wall, cpu
    result["ratio_320_vs_80"] = result["ms_320x512"] / result["ms_80x512"]
    result["cpu_ratio_320_vs_80"] = result["cpu_ms_320x512"] / result["cpu_ms_80x512"]
    result["pairwise_ratio_320_vs_80"] = result["pairwise_ms_320x512"] / result["pairwise_ms_80x512"]
    result["pairwise_work_ratio"] = (320 / 80) ** 2
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = comparable numbers)")
    parser.add_argument("--repeats", type=int, default=100, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    report = measure(torch.device("cpu"), args.repeats, args.warmup)
    report.update(threads=args.threads, repeats=args.repeats, torch=torch.__version__, goal_ms_80x512=2.0)
    if torch.cuda.is_available():
        report["cuda"] = measure(torch.device("cuda"), args.repeats, args.warmup)
        report["cuda"]["name"] = torch.cuda.get_device_name()
    emit(report, args.out)


if __name__ == "__main__":
    main()
