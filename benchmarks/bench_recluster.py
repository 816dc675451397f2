"""Time of one recluster at SOP scale, split into feature extraction and clustering (METHOD.md §3.4, §13).

Extraction: ``--extract-images`` synthetic in-memory images go through the eval transform, the real eval loader
and ``extract_features`` (penultimate features, as for clustering), and the rate is extrapolated to the SOP
training set (59,551 images). Clustering: synthetic class-structured features (``--n`` × ``--dim``, 11,318
classes of about 5 images in 12 super-classes, L2-normalised) go through the real ``recluster`` for each K of
``--ks``: k-means with the acceptance retries, Hungarian matching against a previous assignment (a random
partition that keeps classes together), removal of unpaired samples and degenerate merges. The k-means calls
and the matching are counted and timed on their way through, without changing what they do, except that
``--niter`` (default 100, as METHOD prescribes) is passed to every k-means call.

It prints one JSON object: ``extract_img_per_s``, ``extract_sop_s_extrapolated``, ``cluster_s``, ``trials``,
``kmeans_s`` and ``match_s`` (dicts K → value), ``backend``, ``device``, ``niter`` and machine information.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_recluster.py        # resnet18 at 64 px on the CPU, faiss CPU, K = 2…32
    .venv/bin/python benchmarks/bench_recluster.py --n 5000 --dim 128 --ks 2,4 --extract-images 64
    python benchmarks/bench_recluster.py --backend faiss-gpu --device cuda --arch resnet50 --size 224 \\
        --amp bf16 --channels-last --extract-images 20000 --workers 16
"""

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import emit, machine_info  # noqa: E402
from dataset.base import ImageDataset, Split  # noqa: E402
from dataset.loader import make_eval_loader  # noqa: E402
from dataset.transforms import build_eval_transform  # noqa: E402
from lib import kmeans as kmeans_module  # noqa: E402
from lib.faiss_backend import describe_faiss, require_faiss_gpu  # noqa: E402
from lib.seeding import numpy_generator, torch_generator  # noqa: E402
from metriclearning import clustering  # noqa: E402
from metriclearning.clustering import SeedStream, recluster  # noqa: E402
from metriclearning.features import extract_features  # noqa: E402
from metriclearning.model import EmbeddingModel  # noqa: E402

SOP_TRAIN_IMAGES = 59551
SOP_TRAIN_CLASSES = 11318
SOP_SUPER_CLASSES = 12
SOP_BATCH = 80
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16}
SEED = 0


# ---------------------------------------------------------------- extraction
def synthetic_images(count: int, resize: int, seed: int) -> list[np.ndarray]:
    """``count`` references to at most 32 distinct smooth colour images a bit larger than the resize."""
    rng = numpy_generator(seed, "bench-recluster-images")
    height, width = resize * 5 // 4, resize * 3 // 2
    distinct = []
    for _ in range(min(count, 32)):
        coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        distinct.append(np.ascontiguousarray(np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]))
    return [distinct[i % len(distinct)] for i in range(count)]


def extraction_rate(args: argparse.Namespace, device: torch.device) -> float:
    """Images per second of ``extract_features`` (penultimate mode) through the eval loader."""
    model = EmbeddingModel(arch=args.arch, sz_embedding=512, generator=torch_generator(SEED, "model-init"))
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    count = args.extract_images
    labels = np.arange(count) // 5
    split = Split("train", synthetic_images(count, args.resize, SEED), labels, [str(c) for c in range(labels[-1] + 1)])
    dataset = ImageDataset(split, build_eval_transform(args.resize, args.size))
    warmup = ImageDataset(split.subset(np.arange(min(count, args.eval_batch_size))), dataset.transform)

    def extract(data: ImageDataset) -> np.ndarray:
        loader = make_eval_loader(
            data, batch_size=args.eval_batch_size, num_workers=args.workers, pin_memory=device.type == "cuda"
        )
        return extract_features(
            model,
            loader,
            device,
            mode="penultimate",
            n_items=len(data),
            amp_dtype=AMP_DTYPES[args.amp],
            channels_last=args.channels_last,
        )

    extract(warmup)
    start = time.perf_counter()
    extract(dataset)
    return count / (time.perf_counter() - start)


# ---------------------------------------------------------------- clustering
def synthetic_features(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-structured unit vectors (N, dim) float32 and labels (N,): class i has about N / n_classes images.

    Super-class, class and sample offsets are random Gaussian directions; the within-class cosine is about 0.5,
    the within-super-class one about 0.13 and the rest about 0, so k-means has real structure to find.
    """
    rng = numpy_generator(seed, "bench-recluster-features")
    labels = np.sort(np.arange(n) % n_classes)
    supers = rng.standard_normal((SOP_SUPER_CLASSES, dim), dtype=np.float32)
    centres = supers[rng.integers(SOP_SUPER_CLASSES, size=n_classes)] * 0.6
    centres += rng.standard_normal((n_classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    features = np.empty((n, dim), dtype=np.float32)
    for first in range(0, n, 8192):  # in chunks: no second N x dim temporary
        rows = slice(first, min(first + 8192, n))
        noise = rng.standard_normal((rows.stop - rows.start, dim), dtype=np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        chunk = centres[labels[rows]] + noise
        features[rows] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return features, labels


class TimedCalls:
    """Wraps a function to count and time its calls; extra keyword arguments are passed to every call."""

    def __init__(self, function, **extra):
        self.function, self.extra = function, extra
        self.calls, self.seconds = 0, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs, **self.extra)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start


def time_recluster(features: np.ndarray, labels: np.ndarray, k: int, args: argparse.Namespace) -> dict:
    """One flat recluster with K = k (no split) against a class-preserving previous partition."""
    rng = numpy_generator(SEED, "bench-recluster-previous", k)
    previous = rng.integers(k, size=int(labels.max()) + 1)[labels]
    kmeans_calls = TimedCalls(kmeans_module.kmeans, niter=args.niter)
    match_calls = TimedCalls(clustering.match_to_previous)
    with (
        mock.patch.object(clustering, "kmeans", kmeans_calls),
        mock.patch.object(clustering, "match_to_previous", match_calls),
    ):
        start = time.perf_counter()
        result = recluster(
            features,
            labels,
            k=k,
            k_final=k,
            previous=previous,
            split=False,
            seeds=SeedStream(None),
            backend=args.backend,
            batch_size=SOP_BATCH,
            device=args.gpu_index,
        )
        seconds = time.perf_counter() - start
    return {
        "cluster_s": round(seconds, 3),
        "trials": kmeans_calls.calls,
        "kmeans_s": round(kmeans_calls.seconds, 3),
        "match_s": round(match_calls.seconds, 4),
        "warnings": len(result.warnings),
        "smallest_cluster": int(result.sizes.min()),
        "largest_cluster": int(result.sizes.max()),
    }


# ---------------------------------------------------------------- report
def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks {text!r}: expected comma-separated integers, e.g. 2,4,8") from None
    if not ks or min(ks) < 2:
        raise argparse.ArgumentTypeError(f"--ks {text!r}: every K must be at least 2")
    return ks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=kmeans_module.BACKENDS, default="faiss", help="k-means backend")
    parser.add_argument("--ks", type=parse_ks, default=[2, 4, 8, 16, 32], help="numbers of clusters, e.g. 2,4,8")
    parser.add_argument("--n", type=int, default=SOP_TRAIN_IMAGES, help="clustered points (SOP train: 59,551)")
    parser.add_argument("--dim", type=int, default=2048, help="feature width (ResNet-50 pooled: 2048)")
    parser.add_argument("--classes", type=int, help="classes among the points (default: the SOP ratio, 11,318 at N)")
    parser.add_argument("--niter", type=int, default=100, help="faiss k-means iterations (METHOD: 100)")
    parser.add_argument("--extract-images", type=int, default=2000, help="images timed through extraction")
    parser.add_argument("--arch", default="resnet18", help="backbone for extraction (resnet50 on a GPU)")
    parser.add_argument("--size", type=int, default=64, help="crop size of the eval transform (224 on a GPU)")
    parser.add_argument("--resize", type=int, help="shorter side before the crop (default: size × 8/7)")
    parser.add_argument("--eval-batch-size", type=int, default=128, help="images per extraction batch")
    parser.add_argument("--workers", type=int, default=0, help="eval-loader worker processes")
    parser.add_argument("--device", default="cpu", help="extraction device: cpu, cuda or cuda:N (faiss-gpu: N)")
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default="off", help="autocast dtype of extraction")
    parser.add_argument("--channels-last", action="store_true", help="channels-last model and images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadier on a shared CPU)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.resize is None:
        args.resize = round(args.size * 8 / 7)
    if args.classes is None:
        args.classes = max(2, round(args.n * SOP_TRAIN_CLASSES / SOP_TRAIN_IMAGES))
    if min(args.n, args.dim, args.niter, args.extract_images, args.size, args.eval_batch_size, args.threads) < 1:
        parser.error("--n, --dim, --niter, --extract-images, --size, --eval-batch-size and --threads must be >= 1")
    if args.resize < args.size or not 2 <= args.classes <= args.n // 2 or max(args.ks) > args.classes:
        parser.error("need --resize >= --size, 2 <= --classes <= --n / 2 and every K <= --classes")
    device = torch.device(args.device)
    args.gpu_index = (device.index or 0) if args.backend == "faiss-gpu" else None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.backend == "faiss-gpu":
        require_faiss_gpu()
    rate = extraction_rate(args, device)
    features, labels = synthetic_features(args.n, args.dim, args.classes, SEED)
    per_k = {k: time_recluster(features, labels, k, args) for k in args.ks}
    report = {
        "extract_img_per_s": round(rate, 2),
        "extract_sop_s_extrapolated": round(SOP_TRAIN_IMAGES / rate, 1),
        **{key: {str(k): per_k[k][key] for k in args.ks} for key in next(iter(per_k.values()))},
        "backend": args.backend,
        "device": str(device),
        "niter": args.niter,
        "niter_follows_method": args.niter == 100,
        "n": args.n,
        "dim": args.dim,
        "classes": args.classes,
        "extract_images": args.extract_images,
        "arch": args.arch,
        "size": args.size,
        "resize": args.resize,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "workers": args.workers,
        "machine": machine_info(device, threads=torch.get_num_threads(), faiss=describe_faiss()),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
