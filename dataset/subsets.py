"""Class subsets of a parsed dataset: ``--ratio-classes`` (§7.7) and the validation split (§7.8)."""

import dataclasses

import numpy as np

from dataset.base import LoadedDataset, Split
from lib.errors import ConfigError, DatasetError
from lib.seeding import numpy_generator


def ratio_class_count(n_classes: int, ratio: float) -> int:
    """round(n × ratio) with Python's half-to-even rounding, at least 2 (and at most n)."""
    return min(n_classes, max(2, round(n_classes * ratio)))


def apply_ratio_classes(dataset: LoadedDataset, ratio: float) -> LoadedDataset:
    """Keep the first round(n × ratio) classes, in label order, of every split.

    Query and gallery (inshop) share one label space, so they keep the same ids; vid's lists are cut one by one.
    """
    if not 0 < ratio <= 1:
        raise ConfigError(f"--ratio-classes {ratio} is out of range: give a fraction in (0, 1].")
    if ratio == 1:
        return dataset
    splits = {
        name: split.select_classes(np.arange(ratio_class_count(split.n_classes, ratio)))
        for name, split in dataset.splits.items()
    }
    info = {**dataset.info, "ratio_classes": ratio, "classes_before_ratio": _class_counts(dataset.splits)}
    return dataclasses.replace(dataset, splits=splits, info=info)


def _class_counts(splits: dict[str, Split]) -> dict[str, int]:
    return {name: split.n_classes for name, split in splits.items()}


def carve_validation(train: Split, val_ratio: float, seed: int) -> tuple[Split, Split]:
    """Hold out round(v × n) training classes (at least 2, leaving at least 2) as a class-disjoint "val" split.

    The classes are drawn with a generator derived from the run seed. Both splits are relabelled 0…n−1 in the
    original label order; ``val.class_names`` names the held-out classes, to be recorded with the run.
    """
    if not 0 < val_ratio < 1:
        raise ConfigError(f"--val-ratio {val_ratio} is out of range: give a fraction in [0, 1), 0 for no validation.")
    n_classes = train.n_classes
    if n_classes < 4:
        raise DatasetError(
            f"--val-ratio needs at least 4 training classes (2 for validation, 2 for training); found {n_classes}. "
            "Use --val-ratio 0 or a dataset with more classes."
        )
    n_val = min(max(2, round(val_ratio * n_classes)), n_classes - 2)
    rng = numpy_generator(seed, "validation-classes")
    is_val = np.zeros(n_classes, dtype=bool)
    is_val[rng.choice(n_classes, size=n_val, replace=False)] = True
    return (
        train.select_classes(np.flatnonzero(~is_val), name="train"),
        train.select_classes(np.flatnonzero(is_val), name="val"),
    )
