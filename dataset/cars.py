"""Cars196 (METHOD.md §7.3): ``cars_annos.mat`` lists every image with its class; classes 1–98 train.

Only ``cars_annos.mat`` and ``car_ims/`` are read; bounding boxes, ``cars_train/`` and the official train/test
flag are not used.
"""

import os
from pathlib import Path

import numpy as np
import scipy.io

from dataset.base import LoadedDataset, count_warnings, make_split, require_path
from lib.errors import DatasetError

LAYOUT = (
    "R/cars196/cars_annos.mat (struct array 'annotations' with fields relative_im_path, bbox_x1, bbox_y1, "
    "bbox_x2, bbox_y2, class, test) and R/cars196/car_ims/<image>.jpg"
)
EXPECTED = {"train": (8054, 98), "eval": (8131, 98)}
EXPECTED_RECORDS = 16185
N_CLASSES = 196


def cars_root(dataset_dir: str | Path) -> str:
    return os.path.join(os.path.abspath(dataset_dir), "cars196")


def read_annotations(mat_path: str) -> tuple[list[str], list[int], dict[int, str]]:
    """(relative image paths, classes 1…196, class -> name) from ``cars_annos.mat``."""
    try:
        mat = scipy.io.loadmat(mat_path, squeeze_me=True)
    except Exception as error:  # scipy raises several unrelated types for a damaged file
        raise DatasetError(f"cars: cannot read {mat_path} ({error}). Restore it from the Cars196 archive.") from None
    records = mat.get("annotations")
    fields = getattr(getattr(records, "dtype", None), "names", None) or ()
    if "relative_im_path" not in fields or "class" not in fields:
        raise DatasetError(
            f"cars: {mat_path} holds no struct array 'annotations' with fields relative_im_path "
            f"and class. Expected layout: {LAYOUT}"
        )
    records = np.atleast_1d(records)
    paths, classes = [], []
    for number, record in enumerate(records, start=1):
        path, cls = record["relative_im_path"], record["class"]
        try:
            paths.append(_as_path(path))
            classes.append(_as_class(cls))
        except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite class
            raise DatasetError(
                f"cars: {mat_path}, annotation record {number}: cannot read relative_im_path {path!r} and class "
                f"{cls!r}. Restore the file from the Cars196 archive."
            ) from None
        if not 1 <= classes[-1] <= N_CLASSES:
            raise DatasetError(
                f"cars: {mat_path}, annotation record {number}: class {classes[-1]} is outside 1…{N_CLASSES}. "
                "Restore the file from the Cars196 archive."
            )
    names = np.atleast_1d(mat.get("class_names", np.array([], dtype=object))).reshape(-1)
    return paths, classes, {k + 1: str(name) for k, name in enumerate(names)}


def _single(value):
    """The one element of a MATLAB scalar or 1-element array; a ValueError for an empty or larger array."""
    values = np.asarray(value).reshape(-1)
    if values.size != 1:
        raise ValueError(f"{values.size} values where one is expected")
    return values[0]


def _as_path(value) -> str:
    """The image path of one record; a TypeError unless it is text (a number would pass as a missing image)."""
    path = _single(value)
    if not isinstance(path, str):
        raise TypeError(f"relative_im_path of type {type(path).__name__}")
    return path


def _as_class(value) -> int:
    """The class of one record: a whole real number within int64 (MATLAB stores uint8 or double).

    Complex, fractional and text classes would otherwise be truncated or converted silently, and values beyond
    int64 would overflow in numpy later.
    """
    number = _single(value)
    if not isinstance(number, int | float | np.integer | np.floating):
        raise TypeError(f"class of type {type(number).__name__}")
    if number != int(number) or abs(int(number)) > np.iinfo(np.int64).max:
        raise ValueError(f"class {number} is not a whole number within int64")
    return int(number)


def load_cars(dataset_dir: str | Path) -> LoadedDataset:
    """Label = class − 1; the first half of the class numbers (1–98 of 196) train, the rest eval.

    The split is by class number, up to half the largest one found (98 for the complete dataset), so a class
    without records does not move another class across it.
    """
    root = cars_root(dataset_dir)
    require_path(root, "dataset", "cars", LAYOUT, is_dir=True)
    mat_path = os.path.join(root, "cars_annos.mat")
    require_path(mat_path, "annotation", "cars", LAYOUT, is_dir=False)
    relative, classes, names = read_annotations(mat_path)
    if not classes:
        raise DatasetError(f"cars: {mat_path} lists no image. Restore it from the Cars196 archive.")
    paths = np.asarray([os.path.join(root, path) for path in relative], dtype=str)
    classes = np.asarray(classes, dtype=np.int64)
    is_train = classes <= classes.max() // 2
    splits = {
        name: make_split(name, paths[mask], classes[mask], names=lambda c: names.get(c, str(c)))
        for name, mask in (("train", is_train), ("eval", ~is_train))
    }
    warnings = count_warnings("cars", splits, EXPECTED)
    if len(relative) != EXPECTED_RECORDS:
        warnings.append(f"cars: expected {EXPECTED_RECORDS} annotation records, found {len(relative)}")
    return LoadedDataset("cars", root, splits, warnings, layout=LAYOUT)
