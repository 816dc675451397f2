"""What every dataset parser produces: splits of (image, label) pairs, and the torch Dataset that decodes them.

A dataset is parsed once per run (METHOD.md §7.1); clusters, validation splits and class subsets are index
views of the parsed splits, never re-reads of the annotation files.
"""

import codecs
import os
import re
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from tqdm import tqdm

from lib.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
MAX_LISTED_FILES = 5
INTEGER = re.compile(r"(-?)0*([0-9]{1,19})")  # ASCII digits only: int() also takes "²" (and fails) or "١"
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset. Labels are dense: 0 … len(class_names) − 1.

    ``images`` holds absolute file paths (a numpy string array: forked loader workers then read it without
    copy-on-write growth) or in-memory uint8 images. ``eq=False``: splits compare by identity, since
    element-wise array equality has no single truth value.
    """

    name: str
    images: Sequence
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.images) != len(labels):
            raise ValueError(f"split {self.name}: {len(self.images)} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"split {self.name}: labels must lie in 0 … {len(self.class_names) - 1}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        """Size of the label space (query and gallery of inshop share one, even if a class lacks images)."""
        return len(self.class_names)

    @property
    def n_classes_present(self) -> int:
        """Number of classes that have at least one image in this split."""
        return int(np.unique(self.labels).size)

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "Split":
        """The images at ``indices``, labels unchanged."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Split(
            name=name or self.name,
            images=_take(self.images, indices),
            labels=self.labels[indices],
            class_names=self.class_names,
        )

    def select_classes(self, classes: Sequence[int] | np.ndarray, name: str | None = None) -> "Split":
        """The images of ``classes``, relabelled so that ``classes[j]`` becomes label j."""
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        new_label = np.full(self.n_classes, -1, dtype=np.int64)
        new_label[classes] = np.arange(classes.size)
        indices = np.flatnonzero(new_label[self.labels] >= 0)
        return Split(
            name=name or self.name,
            images=_take(self.images, indices),
            labels=new_label[self.labels[indices]],
            class_names=tuple(self.class_names[c] for c in classes),
        )


def _take(images: Sequence, indices: np.ndarray) -> Sequence:
    if isinstance(images, np.ndarray):
        return images[indices]
    return [images[i] for i in indices]


def make_split(
    name: str,
    paths: Sequence[str],
    raw_ids: Sequence[int],
    names: Callable[[int], str] = str,
    label_space: Sequence[int] | None = None,
) -> Split:
    """A split labelled by the rank of each raw class id within ``label_space`` (default: its distinct ids).

    For the official data this reproduces the published labels (e.g. class − 1 for the training classes) up to
    a constant shift of the eval labels, which §7.1 allows. ``names`` turns a raw id into a readable class name.
    """
    raw_ids = np.asarray(raw_ids, dtype=np.int64).reshape(-1)
    space = np.unique(raw_ids) if label_space is None else np.asarray(label_space, dtype=np.int64)
    class_names = tuple(names(r) for r in space.tolist())
    labels = np.searchsorted(space, raw_ids)
    return Split(name=name, images=np.asarray(paths, dtype=str), labels=labels, class_names=class_names)


@dataclass(frozen=True, eq=False)
class LoadedDataset:
    """A parsed dataset: its splits, plus the warnings to show the user and record with the run."""

    name: str
    root: str
    splits: dict[str, Split]
    warnings: list[str]
    layout: str = ""  # the expected on-disk layout, quoted in error messages
    info: dict = field(default_factory=dict)  # facts worth recording (official vs found counts, ratio ...)

    @property
    def eval_split_names(self) -> tuple[str, ...]:
        """The splits evaluated during training or by eval_model.py, in their natural order."""
        return tuple(name for name in self.splits if name not in ("train", "val"))


# Pixels as stored, like the original's PIL ``convert("RGB")``: OpenCV would otherwise rotate images by their
# EXIF orientation tag, and the same photo would reach the network turned by 90 degrees.
_DECODE = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def load_rgb(image) -> np.ndarray:
    """An H×W×3 uint8 RGB array from a file path or an in-memory image.

    ``cv2.imread`` crashes the whole process (segmentation fault) on a file name that is not valid UTF-8, so
    such a file is read by Python and given to ``cv2.imdecode`` instead (which, unlike ``imread``, rejects
    truncated JPEGs).
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.size == 0 or image.ndim not in (2, 3):
            raise DatasetError(f"in-memory image of dtype {image.dtype} and shape {image.shape}: need uint8 HxW(x3)")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.shape[2] == 1:
            return np.repeat(image, 3, axis=2)
        if image.shape[2] != 3:
            raise DatasetError(f"in-memory image of shape {image.shape}: need 1 or 3 channels")
        return image
    path = str(image)
    try:
        bgr = cv2.imread(path, _DECODE) if _is_utf8(path) else _imdecode_file(path)
    except cv2.error as error:  # e.g. more pixels than OpenCV's CV_IO_MAX_IMAGE_PIXELS (2^30 by default)
        raise DatasetError(
            f"cannot read image {printable(path)}: OpenCV refused it ({error.err}). Replace, shrink or remove the "
            "file, then run again."
        ) from error
    if bgr is None or bgr.size == 0:
        reason = "the file does not exist" if not os.path.exists(path) else "OpenCV cannot decode it"
        raise DatasetError(
            f"cannot read image {printable(path)}: {reason}. Replace or remove the file, then run again."
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ImageDataset(torch.utils.data.Dataset):
    """Decodes one image per item and applies a transform driven by an explicit per-item generator.

    The key is an index, or ``(index, aug_seed)`` from a batch sampler that seeds each augmentation, so that
    augmentations do not depend on which worker loads the item.
    """

    def __init__(self, split: Split, transform: Callable[[np.ndarray, np.random.Generator], torch.Tensor]):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, aug_seed = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), int(key))
        image = load_rgb(self.split.images[index])
        tensor = self.transform(image, np.random.default_rng(aug_seed))
        return tensor, int(self.split.labels[index]), index


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _imdecode_file(path: str) -> np.ndarray | None:
    try:
        with open(path, "rb") as handle:
            data = np.frombuffer(handle.read(), dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, _DECODE) if data.size else None


def is_image_file(name: str) -> bool:
    """A visible file with an image extension: skips ``.DS_Store``, ``._x.jpg`` (macOS) and notes."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def printable(path: str) -> str:
    """The path with the bytes of a non-UTF-8 file name shown as ``\\xNN``.

    Such names reach Python as lone surrogates, which a UTF-8 stdout or log file refuses to encode.
    """
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no file-name byte
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def list_files(paths: Sequence[str]) -> str:
    """At most a few paths, and how many there are in all, for an error message."""
    shown = ", ".join(printable(str(p)) for p in paths[:MAX_LISTED_FILES])
    more = f" and {len(paths) - MAX_LISTED_FILES} more" if len(paths) > MAX_LISTED_FILES else ""
    return f"{shown}{more}"


def count_warnings(dataset: str, splits: dict[str, Split], expected: dict[str, tuple[int, int]]) -> list[str]:
    """Warnings for every split whose image or class count differs from the official (images, classes)."""
    warnings = []
    for name, (images, classes) in expected.items():
        split = splits.get(name)
        found_images = len(split) if split is not None else 0
        found_classes = split.n_classes_present if split is not None else 0
        if found_images != images:
            warnings.append(f"{dataset} {name}: expected {images} images, found {found_images}")
        if found_classes != classes:
            warnings.append(f"{dataset} {name}: expected {classes} classes, found {found_classes}")
    return warnings


def path_array(split: Split) -> np.ndarray | None:
    """The split's image paths as a numpy string array; None for in-memory images (glyphs) or a plain list."""
    images = split.images
    return images if isinstance(images, np.ndarray) and images.dtype.kind == "U" else None


def file_paths(dataset: LoadedDataset) -> list[str]:
    """Every distinct image path of the dataset (vid's test lists share images), in first-seen order."""
    paths: dict[str, None] = {}
    for split in dataset.splits.values():
        if (array := path_array(split)) is not None:
            paths.update(dict.fromkeys(array.tolist()))
        else:
            paths.update((str(image), None) for image in split.images if isinstance(image, str))
    return list(paths)


def _decode_problem(path: str) -> str | None:
    try:
        load_rgb(path)
    except DatasetError:
        return path
    return None


def find_file_problems(dataset: LoadedDataset, decode: bool, workers: int = 1, progress: bool = False) -> list[str]:
    """Error messages for missing images and, if ``decode``, for images OpenCV cannot read. Empty if all is well.

    Existence is a cheap stat per file; decoding every image is what ``python -m dataset.verify`` does.
    """
    paths = file_paths(dataset)
    missing = [p for p in paths if not os.path.isfile(p)]
    problems = []
    if missing:
        problems.append(
            f"{dataset.name}: {len(missing)} image(s) listed in the annotations are missing: {list_files(missing)}. "
            f"Expected layout: {dataset.layout}"
        )
    if decode:
        absent = set(missing)
        unreadable = _unreadable([p for p in paths if p not in absent], workers, progress)
        if unreadable:
            problems.append(
                f"{dataset.name}: {len(unreadable)} image(s) are empty or cannot be decoded: {list_files(unreadable)}. "
                "Replace them with intact copies of the dataset files."
            )
    return problems


def _unreadable(paths: list[str], workers: int, progress: bool) -> list[str]:
    """The paths that fail to decode; OpenCV releases the GIL while decoding, so threads help."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_decode_problem, paths, chunksize=64)
        results = tqdm(results, total=len(paths), desc="decoding", unit="img", disable=not progress, file=sys.stderr)
        return [p for p in results if p is not None]


def require_path(path: str, what: str, dataset: str, layout: str, is_dir: bool) -> None:
    """A DatasetError naming the missing folder or file and the layout the parser expects."""
    found = os.path.isdir(path) if is_dir else os.path.isfile(path)
    if not found:
        kind = "folder" if is_dir else "file"
        raise DatasetError(
            f"{dataset}: {what} {kind} {path} not found. Expected layout: {layout}, where R is --dataset-dir."
        )


ARCHIVE_FIX = "The file may be truncated or edited: restore the original from the dataset archive."


def line_error(path: str, line_no: int, line: str, expected: str, fix: str = ARCHIVE_FIX) -> DatasetError:
    """The error for an annotation line that does not parse, naming the file and 1-based line number."""
    quoted = line.rstrip()
    if len(quoted) > 200:
        quoted = quoted[:200] + "…"
    return DatasetError(f"{path}, line {line_no}: cannot parse {quoted!r}; expected {expected}. {fix}")


def read_lines(path: str) -> list[str]:
    """The lines of a text annotation file, with a DatasetError naming the line if the file is not UTF-8 text.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only: ``str.splitlines`` also splits at form feeds and other
    separators, which would make the line numbers in error messages disagree with every text editor. A leading
    byte-order mark (Windows editors write one) is dropped: it would otherwise join the first field.
    """
    with open(path, "rb") as handle:
        data = handle.read().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_no = _universal_newlines(data[: error.start].decode("utf-8")).count("\n") + 1
        raise DatasetError(
            f"{path}, line {line_no}: not UTF-8 text ({error.reason} at byte {error.start}). "
            "Restore the file from the dataset archive."
        ) from None
    lines = _universal_newlines(text).split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _universal_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_int(text: str) -> int | None:
    """An annotation integer (ASCII digits, optional minus) that fits in int64, or None.

    ``int()`` alone would accept other Unicode digits, fail on "²", and refuse strings of over 4300 digits
    with a ValueError; numpy would overflow later on values beyond int64.
    """
    match = INTEGER.fullmatch(text)
    if match is None or int(match.group(2)) > INT64_MAX:
        return None
    return -int(match.group(2)) if match.group(1) else int(match.group(2))
