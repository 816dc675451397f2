"""Images/s of a full divide-and-conquer training step against a plain training step of the same network.

The full step is the real training loop, ``experiment.epoch.train_one_epoch`` and its ``_train_step``, fed
batches that are already in memory: forward with a learner id (K masks, ids cycling as in a batch plan),
distance-weighted mining, margin loss, mask regulariser, Adam over the run's parameter groups, the per-step
seeding, device-side loss sums and the non-finite check. The bare step is what any metric-learning code pays
anyway: the same backbone and embedding layer on the same batch, forward, the mean of the embeddings as the
loss, backward, one Adam step over a single group (METHOD.md §13). ``overhead_pct`` is therefore what divide and
conquer adds. Blocks of bare and full steps alternate, and medians are reported, so that load from other
processes hits both alike; ``overhead_pct_paired`` is the median of the per-round ratios, and ``overhead_cpu_pct``
compares process CPU time, which other processes disturb less on a shared CPU. The goal is ``overhead_pct`` ≤ 5.

Subnormal numbers are flushed to zero on the CPU (``flush_denormal`` in the JSON; ``--keep-denormals`` turns
that off): the randomly initialised backbone produces subnormal intermediate values, which x86 CPUs process many
times slower, in amounts that depend on the loss's gradient scale. They made both steps about a third slower on
the development machine, and the bare step more than the full one, which hid the overhead being measured.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_train_step.py                  # resnet18, 64 px, B = 80 (S = 2), CPU
    .venv/bin/python benchmarks/bench_train_step.py --steps 2 --rounds 2 --warmup 1 --batch 16
    python benchmarks/bench_train_step.py --arch resnet50 --size 224 --device cuda --amp bf16 --channels-last
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import emit, machine_info  # noqa: E402
from dataset.cluster_sampler import PlannedBatch  # noqa: E402
from dataset.loader import Batch  # noqa: E402
from experiment.epoch import EpochProgress, StepSetup, train_one_epoch  # noqa: E402
from lib.seeding import torch_generator  # noqa: E402
from metriclearning.criteria import build_criterion  # noqa: E402
from metriclearning.model import EmbeddingModel  # noqa: E402
from metriclearning.optim import OptimSettings, build_optimizer, fused_supported  # noqa: E402

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16}
# The SOP preset's optimisation settings (METHOD.md §2.5): they decide the parameter groups of the full step.
SOP_OPTIM = OptimSettings(base_lr=1e-5, weight_decay=1e-4, mask_lr_mult=100.0, mask_wd_mult=1.0)
SOP_MARGIN = 0.2
SOP_LAMBDA = 0.01
SEED = 0


def build_model(args: argparse.Namespace, device: torch.device) -> EmbeddingModel:
    model = EmbeddingModel(
        arch=args.arch,
        sz_embedding=args.embedding,
        nb_clusters_final=args.masks,
        n_masks=args.masks,
        generator=torch_generator(SEED, "model-init"),
    ).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def full_setup(model: EmbeddingModel, args: argparse.Namespace, device: torch.device) -> StepSetup:
    """The training loop's step configuration: SOP criterion, groups and regulariser."""
    criterion = build_criterion(
        "MarginLoss",
        margin=SOP_MARGIN,
        sampler="distanceweighted",
        soft_loss=False,
        lr_beta=0.0,
        n_train_classes=args.batch // args.samples_per_class,
        alpha=1.0,
        lr_alpha=0.0,
    ).to(device)
    return StepSetup(
        model=model,
        masks=model.masks,
        criterion=criterion,
        optimizer=build_optimizer(model, SOP_OPTIM, criterion.loss_parameter_group()),
        scaler=None,
        device=device,
        amp_dtype=AMP_DTYPES[args.amp],
        channels_last=args.channels_last,
        masking_lambda=SOP_LAMBDA,
        with_l1=False,
        seed=SEED,
    )


def full_block(setup: StepSetup, images: torch.Tensor, args: argparse.Namespace) -> Callable[[int], None]:
    """``run(n)`` trains n steps through ``train_one_epoch`` on a plan of n batches, learner ids cycling."""
    labels = np.repeat(np.arange(args.batch // args.samples_per_class), args.samples_per_class)
    positions = np.arange(args.batch)
    tensor_labels, tensor_positions = torch.from_numpy(labels), torch.from_numpy(positions)

    def run(steps: int) -> None:
        plan = [PlannedBatch(i % args.masks, positions) for i in range(steps)]
        batches = [Batch(images, tensor_labels, tensor_positions, p.learner_id, i) for i, p in enumerate(plan)]
        train_one_epoch(
            0,
            plan=plan,
            loader=batches,
            train_labels=labels,
            setup=setup,
            full_embedding=False,
            progress=EpochProgress(),
            stop_requested=lambda: False,
            lrs={group["name"]: group["lr"] for group in setup.optimizer.param_groups},
            show_progress=False,
        )

    return run


def bare_block(model: EmbeddingModel, images: torch.Tensor, args: argparse.Namespace) -> Callable[[int], None]:
    """``run(n)`` takes n plain steps: forward to the embedding layer, a trivial loss, backward, Adam."""
    params = [*model.backbone.parameters(), *model.embedding.parameters()]
    optimizer = torch.optim.Adam(
        params, lr=SOP_OPTIM.base_lr, weight_decay=SOP_OPTIM.weight_decay, fused=fused_supported(params)
    )
    amp_dtype = AMP_DTYPES[args.amp]

    def run(steps: int) -> None:
        for _ in range(steps):
            with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                embeddings = model.embedding(model.dropout(model.pooled(images)))
            loss = embeddings.float().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def timed(run: Callable[[int], None], steps: int, device: torch.device) -> tuple[float, float]:
    """Wall and process CPU seconds of ``run(steps)``, the device synchronised at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(runs: dict[str, Callable[[int], None]], args: argparse.Namespace, device: torch.device) -> dict:
    """Alternating blocks of ``args.steps`` steps, ``args.rounds`` times; the bare/full order flips every round."""
    for run in runs.values():
        run(args.warmup)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(args.rounds):
        order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
        for name in order:
            seconds, cpu_seconds = timed(runs[name], args.steps, device)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    images = args.steps * args.batch
    full_rate = images / statistics.median(wall["full"])
    bare_rate = images / statistics.median(wall["bare"])
    paired = [f / b for f, b in zip(wall["full"], wall["bare"], strict=True)]
    return {
        "full_img_per_s": round(full_rate, 2),
        "bare_img_per_s": round(bare_rate, 2),
        "overhead_pct": round(100.0 * (bare_rate / full_rate - 1.0), 2),
        "overhead_pct_paired": round(100.0 * (statistics.median(paired) - 1.0), 2),
        "overhead_cpu_pct": round(100.0 * (statistics.median(cpu["full"]) / statistics.median(cpu["bare"]) - 1), 2),
        "full_block_s": [round(s, 4) for s in wall["full"]],
        "bare_block_s": [round(s, 4) for s in wall["bare"]],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="torchvision backbone (resnet50 for the GPU goal)")
    parser.add_argument("--size", type=int, default=64, help="square input resolution in pixels")
    parser.add_argument("--batch", type=int, default=80, help="B: images per step")
    parser.add_argument("--samples-per-class", type=int, default=2, help="S: images per class in a batch")
    parser.add_argument("--masks", type=int, default=4, help="K: learner masks; batches cycle through the ids")
    parser.add_argument("--embedding", type=int, default=512, help="D: embedding size")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default="off", help="autocast dtype of the forward")
    parser.add_argument("--channels-last", action="store_true", help="model and images in channels-last layout")
    parser.add_argument("--steps", type=int, default=1, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=11, help="timed blocks of each kind, alternating")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadier on a shared CPU)")
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush subnormal floats on the CPU")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.samples_per_class < 1 or args.batch % args.samples_per_class or args.batch // args.samples_per_class < 2:
        parser.error("--batch must be a multiple of --samples-per-class holding at least 2 classes")
    if min(args.steps, args.rounds, args.masks, args.size, args.threads) < 1 or args.warmup < 0:
        parser.error("--steps, --rounds, --masks, --size and --threads must be positive, --warmup non-negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    flush_denormal = not args.keep_denormals and torch.set_flush_denormal(True)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = False  # as in a run (METHOD.md §3.1)
    model = build_model(args, device)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch_generator(SEED, "images"))
    images = images.to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    runs = {
        "bare": bare_block(model, images, args),
        "full": full_block(full_setup(model, args, device), images, args),
    }
    report = measure(runs, args, device)
    report.update(
        arch=args.arch,
        size=args.size,
        batch=args.batch,
        samples_per_class=args.samples_per_class,
        masks=args.masks,
        device=str(device),
        amp=args.amp,
        channels_last=args.channels_last,
        threads=torch.get_num_threads(),
        flush_denormal=flush_denormal,
        steps=args.steps,
        rounds=args.rounds,
        warmup=args.warmup,
        goal_overhead_pct=5.0,
        machine=machine_info(device, torchvision=torchvision.__version__),
    )
    emit(report, args.out)


if __name__ == "__main__":
    main()
