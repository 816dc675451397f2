"""Write a synthetic dataset in the Stanford Online Products layout (METHOD.md §7.4), for benchmarks.

``DIR/sop/Ebay_train.txt`` and ``DIR/sop/Ebay_test.txt`` (a header line, then ``image_id class_id
super_class_id path``) and JPEGs at ``DIR/sop/<category>_final/<class_id>_<k>.JPG``, so that ``--dataset sop
--dataset-dir DIR`` and ``dataset.sop.load_sop(DIR)`` read it like the real data. Each class has its own smooth
colour pattern and each image its own noise, so decoding costs about what a photo of the same size costs. Images
are written by ``--workers`` processes; every image is a function of the seed and its position only.

Usage (from the repository root):
    .venv/bin/python benchmarks/make_sop_like.py /tmp/sop_like                      # 4,000 + 400 images, 256 px
    .venv/bin/python benchmarks/make_sop_like.py /tmp/sop_like --train-images 200 --size 96 --workers 2
"""

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.seeding import numpy_generator  # noqa: E402

CATEGORIES = (
    "bicycle",
    "cabinet",
    "chair",
    "coffee_maker",
    "fan",
    "kettle",
    "lamp",
    "mug",
    "sofa",
    "stapler",
    "table",
    "toaster",
)
HEADER = "image_id class_id super_class_id path"


def image_path(class_id: int, k: int) -> str:
    """The list entry of image k of a class (relative to DIR/sop), e.g. ``chair_final/3_0.JPG``."""
    return f"{CATEGORIES[(class_id - 1) % len(CATEGORIES)]}_final/{class_id}_{k}.JPG"


def render(class_id: int, k: int, size: int, seed: int) -> np.ndarray:
    """A size × size BGR image: the class's upsampled 8 × 8 colour grid, shifted and noised per image."""
    pattern = numpy_generator(seed, "sop-like-class", class_id).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    rng = numpy_generator(seed, "sop-like-image", class_id, k)
    image = cv2.resize(pattern, (size, size), interpolation=cv2.INTER_CUBIC)
    image = np.roll(image, tuple(rng.integers(0, size // 8 + 1, size=2)), axis=(0, 1))
    return cv2.add(image, rng.integers(0, 32, size=image.shape, dtype=np.uint8))


def write_images(root: str, entries: list[tuple[int, int]], size: int, seed: int) -> int:
    """Write the JPEGs (quality 90) of ``entries`` = [(class_id, k), …]; returns how many were written."""
    for class_id, k in entries:
        path = os.path.join(root, image_path(class_id, k))
        if not cv2.imwrite(path, render(class_id, k, size, seed), [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"cannot write {path}")
    return len(entries)


def split_entries(first_class: int, n_images: int, per_class: int) -> list[tuple[int, int]]:
    """(class_id, k) of ``n_images`` images, ``per_class`` per class (the last class may have fewer, at least 2)."""
    entries = [(first_class + i // per_class, i % per_class) for i in range(n_images)]
    if n_images % per_class == 1:  # a lone image would be a class of one: give it to the previous class
        entries[-1] = (entries[-2][0], per_class)
    return entries


def write_list(path: str, entries: list[tuple[int, int]]) -> None:
    lines = [HEADER]
    for image_id, (class_id, k) in enumerate(entries, start=1):
        super_id = (class_id - 1) % len(CATEGORIES) + 1
        lines.append(f"{image_id} {class_id} {super_id} {image_path(class_id, k)}")
    Path(path).write_text("\n".join(lines) + "\n")


def make_sop_like(
    dataset_dir: str, *, train_images: int, eval_images: int, per_class: int, size: int, seed: int, workers: int
) -> dict:
    """Write the dataset under ``dataset_dir/sop``; returns its image and class counts per split."""
    root = os.path.join(os.path.abspath(dataset_dir), "sop")
    for category in CATEGORIES:
        os.makedirs(os.path.join(root, f"{category}_final"), exist_ok=True)
    train = split_entries(1, train_images, per_class)
    evaluation = split_entries(train[-1][0] + 1, eval_images, per_class)
    write_list(os.path.join(root, "Ebay_train.txt"), train)
    write_list(os.path.join(root, "Ebay_test.txt"), evaluation)
    everything = train + evaluation
    chunks = [everything[i :: max(workers, 1) * 4] for i in range(max(workers, 1) * 4)]
    write = partial(write_images, root, size=size, seed=seed)
    if workers <= 1:
        written = sum(map(write, chunks))
    else:
        with ProcessPoolExecutor(workers) as pool:
            written = sum(pool.map(write, chunks))
    return {
        "dataset_dir": os.path.abspath(dataset_dir),
        "images": written,
        "train": {"images": len(train), "classes": len({c for c, _ in train})},
        "eval": {"images": len(evaluation), "classes": len({c for c, _ in evaluation})},
        "size": size,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", help="DIR: the dataset goes to DIR/sop (pass DIR as --dataset-dir)")
    parser.add_argument("--train-images", type=int, default=4000, help="images in Ebay_train.txt")
    parser.add_argument("--eval-images", type=int, default=400, help="images in Ebay_test.txt")
    parser.add_argument("--per-class", type=int, default=5, help="images per class (SOP averages 5.3)")
    parser.add_argument("--size", type=int, default=256, help="side of the square JPEGs in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patterns and noise")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="writer processes")
    args = parser.parse_args(argv)
    if args.per_class < 2 or min(args.train_images, args.eval_images) < 2 * args.per_class or args.size < 8:
        parser.error("need --per-class >= 2, at least 2 classes per split and --size >= 8")
    start = time.perf_counter()
    report = make_sop_like(
        args.dataset_dir,
        train_images=args.train_images,
        eval_images=args.eval_images,
        per_class=args.per_class,
        size=args.size,
        seed=args.seed,
        workers=args.workers,
    )
    report["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
