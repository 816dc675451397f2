"""Warnings for annotation lists that parse but break the protocol's assumptions (METHOD.md §7.1, §8.2).

An image listed twice counts twice (as its own exact duplicate, a neighbour at distance 0), and a class or an
image of the training split that reappears in an evaluated split, or a query that is also a gallery item,
makes the metrics overstate what was learned. The official lists have none of these; edited or merged copies
can, and nothing else would say so.
"""

import numpy as np

from dataset.base import LoadedDataset, Split, path_array, printable


def overlap_warnings(dataset: LoadedDataset) -> list[str]:
    splits = dataset.splits
    warnings = [warning for name, split in splits.items() if (warning := _repeated_images(dataset.name, name, split))]
    pairs = [("train", name) for name in splits if name != "train"] + [("query", "gallery")]
    for first, second in pairs:
        if first in splits and second in splits:
            warnings += _shared(dataset.name, first, second, splits[first], splits[second])
    return warnings


def _repeated_images(dataset_name: str, name: str, split: Split) -> str | None:
    paths = path_array(split)
    if paths is None:
        return None
    unique, counts = np.unique(paths, return_counts=True)
    repeated = unique[counts > 1]
    if repeated.size == 0:
        return None
    return (
        f"{dataset_name} {name}: {repeated.size} image(s) listed more than once, e.g. {printable(str(repeated[0]))}; "
        "each listing counts as a separate image"
    )


def _shared(dataset_name: str, first: str, second: str, a: Split, b: Split) -> list[str]:
    warnings = []
    if first == "train":
        classes = np.intersect1d(np.asarray(a.class_names, dtype=str), np.asarray(b.class_names, dtype=str))
        if classes.size:
            warnings.append(
                f"{dataset_name}: {classes.size} class(es) of train also in {second}, e.g. {classes[0]}; "
                "the splits should share no class"
            )
    paths_a, paths_b = path_array(a), path_array(b)  # None: in-memory images, nothing to compare
    if paths_a is not None and paths_b is not None:
        images = np.intersect1d(paths_a, paths_b)
        if images.size:
            warnings.append(
                f"{dataset_name}: {images.size} image(s) of {first} also in {second}, e.g. {printable(str(images[0]))}"
            )
    return warnings
