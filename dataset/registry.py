"""One entry point from ``--dataset NAME`` to a parsed, class-subsetted and file-checked dataset."""

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from dataset.base import LoadedDataset, Split, find_file_problems
from dataset.cars import cars_root, load_cars
from dataset.cub import cub_root, load_cub
from dataset.folder import load_folder
from dataset.inshop import inshop_root, load_inshop
from dataset.overlaps import overlap_warnings
from dataset.sop import load_sop, sop_root
from dataset.subsets import apply_ratio_classes
from dataset.vid import load_vid, vid_root
from lib.errors import ConfigError, DatasetError

DATASET_NAMES = ("cub", "cars", "sop", "inshop", "vid", "folder", "glyphs")
PARSERS = {"cub": load_cub, "cars": load_cars, "sop": load_sop, "inshop": load_inshop, "vid": load_vid}
ROOTS = {"cub": cub_root, "cars": cars_root, "sop": sop_root, "inshop": inshop_root, "vid": vid_root}


def dataset_root(name: str, dataset_dir: str | Path) -> str:
    """Where ``name`` lives under ``--dataset-dir`` (folder and glyphs: the directory itself)."""
    return ROOTS[name](dataset_dir) if name in ROOTS else os.path.abspath(dataset_dir)


def parse_dataset(
    name: str,
    dataset_dir: str | Path,
    *,
    split_file: str | None = None,
    glyphs_classes: int = 0,
    glyphs_renders: int = 2,
    glyphs_size: int = 32,
    glyphs_cache: bool = True,
) -> LoadedDataset:
    """The whole dataset as its annotations describe it: layout errors raise, count mismatches warn.

    Image files are not looked at; ``load_dataset`` and ``python -m dataset.verify`` do that. ``glyphs_cache``
    False keeps generated glyphs out of ``dataset_dir`` (a folder named by a record, not by the user).
    """
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown --dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}.")
    if split_file is not None and name != "folder":
        raise ConfigError(f"--split-file applies only to --dataset folder, not to --dataset {name}.")
    if name == "folder":
        dataset = load_folder(dataset_dir, split_file)
    elif name == "glyphs":
        from dataset.glyphs import load_glyphs  # renders fonts with matplotlib: imported only when needed

        cache_dir = str(dataset_dir) if glyphs_cache and os.path.isdir(dataset_dir) else None
        dataset = load_glyphs(n_classes=glyphs_classes, renders=glyphs_renders, size=glyphs_size, cache_dir=cache_dir)
    else:
        dataset = PARSERS[name](dataset_dir)
    overlaps = overlap_warnings(dataset)
    return dataclasses.replace(dataset, warnings=[*dataset.warnings, *overlaps]) if overlaps else dataset


def load_dataset(
    name: str,
    dataset_dir: str | Path,
    *,
    ratio_classes: float = 1.0,
    split_file: str | None = None,
    glyphs_classes: int = 0,
    glyphs_renders: int = 2,
    glyphs_size: int = 32,
    glyphs_cache: bool = True,
    check_images: bool = False,
) -> LoadedDataset:
    """Parse, keep the ``--ratio-classes`` subset, and make sure every kept image exists.

    ``check_images`` also decodes every kept image (slow on the large datasets) to find unreadable files.
    Missing or unreadable images raise one DatasetError that lists a few of them and their number.
    """
    dataset = parse_dataset(
        name,
        dataset_dir,
        split_file=split_file,
        glyphs_classes=glyphs_classes,
        glyphs_renders=glyphs_renders,
        glyphs_size=glyphs_size,
        glyphs_cache=glyphs_cache,
    )
    dataset = apply_ratio_classes(dataset, ratio_classes)
    problems = find_file_problems(dataset, decode=check_images, workers=min(8, os.cpu_count() or 1))
    if problems:
        raise DatasetError("\n".join(problems))
    return dataset


def split_errors(dataset_name: str, splits: Mapping[str, Split]) -> list[str]:
    """Splits that cannot be trained on or evaluated: retrieval needs at least 2 classes (an empty list file,
    or one whose images all share a class, gives no metrics or meaningless ones)."""
    return [
        f"{dataset_name} {name}: {split.n_classes_present} class(es) with images; at least 2 are needed"
        for name, split in splits.items()
        if split.n_classes_present < 2
    ]
