"""Data-pipeline throughput on one CPU thread: decode + augment + collate, ours against plain torchvision.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_data.py                 # 200 synthetic JPEGs of about 500 × 375, 224 crops
    .venv/bin/python benchmarks/bench_data.py --images 400 --rounds 5

It writes the JPEGs to a temporary folder, then times, in interleaved rounds so that machine load hits all
pipelines alike, (1) our default training pipeline (OpenCV decode, RandomResizedCrop, flip, normalise),
(2) our ``GeomColor`` pipeline and (3) the reference: PIL decode + torchvision RandomResizedCrop,
RandomHorizontalFlip, ToTensor, Normalize. Each pipeline's best round is reported. It prints one JSON object
with ``default_img_per_s``, ``geomcolor_img_per_s``, ``reference_img_per_s``, ``default_vs_reference`` and
machine information. The goal is ``default_vs_reference`` ≥ 1.5.
"""

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import albumentations
import cv2
import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

from benchmarks.report import emit, machine_info
from dataset.base import load_rgb
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform
from lib.seeding import derive_seed, numpy_generator

CROP = 224
RESIZE = 256


def write_jpegs(folder: str, count: int, seed: int) -> list[str]:
    """Smooth random colour images (JPEG quality 90): photo-like enough for realistic decode times."""
    rng = numpy_generator(seed, "bench_data")
    paths = []
    for i in range(count):
        width, height = int(rng.integers(450, 521)), int(rng.integers(340, 401))
        if i % 5 == 0:
            width, height = height, width  # some portrait images
        coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 24, size=image.shape, dtype=np.uint8))
        path = os.path.join(folder, f"{i:04d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def ours(album: str | None, seed: int) -> Callable[[str, int], torch.Tensor]:
    transform = build_train_transform(album, RESIZE, CROP, "bench")
    return lambda path, index: transform(load_rgb(path), np.random.default_rng(derive_seed(seed, index)))


def reference() -> Callable[[str, int], torch.Tensor]:
    pipeline = T.Compose(
        [
            T.RandomResizedCrop(CROP),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )

    def load(path: str, index: int) -> torch.Tensor:
        with Image.open(path) as image:
            return pipeline(image.convert("RGB"))

    return load


def images_per_second(load: Callable[[str, int], torch.Tensor], paths: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    for first in range(0, len(paths), batch_size):
        torch.stack([load(paths[i], i) for i in range(first, min(first + batch_size, len(paths)))])
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="number of synthetic JPEGs")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best counts")
    parser.add_argument("--batch-size", type=int, default=32, help="images collated per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and augmentations")
    args = parser.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    pipelines = {
        "default": ours(None, args.seed),
        "geomcolor": ours("GeomColor", args.seed),
        "reference": reference(),
    }
    best = dict.fromkeys(pipelines, 0.0)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as folder:
        paths = write_jpegs(folder, args.images, args.seed)
        for load in pipelines.values():
            images_per_second(load, paths[: args.batch_size], args.batch_size)  # warm caches and lazy imports
        for _ in range(args.rounds):
            for name, load in pipelines.items():
                best[name] = max(best[name], images_per_second(load, paths, args.batch_size))
    result = {f"{name}_img_per_s": round(rate, 1) for name, rate in best.items()}
    result["default_vs_reference"] = round(best["default"] / best["reference"], 3)
    result.update(images=args.images, rounds=args.rounds, batch_size=args.batch_size, crop=CROP)
    result["machine"] = machine_info(
        torchvision=torchvision.__version__, opencv=cv2.__version__, pillow=PIL.__version__,
        albumentations=albumentations.__version__, threads=1,
    )  # fmt: skip
    emit(result)


if __name__ == "__main__":
    main()
