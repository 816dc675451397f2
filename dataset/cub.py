"""CUB-200-2011 (METHOD.md §7.2): one folder per class under ``images/``; the first half of the classes train."""

import os
from pathlib import Path

from dataset.base import LoadedDataset, count_warnings, is_image_file, make_split, printable, require_path
from lib.errors import DatasetError

LAYOUT = "R/cub-200-2011/images/<class folder, e.g. 001.Black_footed_Albatross>/<image>.jpg"
EXPECTED = {"train": (5864, 100), "eval": (5924, 100)}


def cub_root(dataset_dir: str | Path) -> str:
    return os.path.join(os.path.abspath(dataset_dir), "cub-200-2011", "images")


def load_cub(dataset_dir: str | Path) -> LoadedDataset:
    """Class folders sorted by name get labels 0…199; labels 0–99 train, 100–199 eval.

    The split point is half the number of class folders found, which is 100 for the complete dataset and keeps
    both splits usable on a partial copy (the count mismatch is reported as a warning). Folders without images
    count, so that an emptied folder does not move another class across the split.
    """
    root = cub_root(dataset_dir)
    require_path(root, "image", "cub", LAYOUT, is_dir=True)
    warnings = []
    folders = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        images = sorted(file.path for file in os.scandir(entry.path) if file.is_file() and is_image_file(file.name))
        folders.append((entry.name, images))
        if not images:
            warnings.append(f"cub: class folder {printable(entry.path)} holds no image")
    if not any(images for _, images in folders):
        raise DatasetError(f"cub: no class folder with images under {root}. Expected layout: {LAYOUT}")
    n_train = len(folders) // 2
    splits = {}
    for name, part in (("train", folders[:n_train]), ("eval", folders[n_train:])):
        paths = [path for _, images in part for path in images]
        ids = [k for k, (_, images) in enumerate(part) for _ in images]
        splits[name] = make_split(name, paths, ids, names=lambda k, part=part: part[k][0])
    warnings += count_warnings("cub", splits, EXPECTED)
    return LoadedDataset("cub", root, splits, warnings, layout=LAYOUT)
