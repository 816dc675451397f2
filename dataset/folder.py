"""The user's own class-per-folder image tree (METHOD.md §7.6): ``--dataset folder --dataset-dir R``.

Classes are the immediate sub-folders of R; the first half (by name) train unless ``--split-file`` says otherwise.
"""

import os
from pathlib import Path

from dataset.base import (
    LoadedDataset,
    Split,
    is_image_file,
    line_error,
    list_files,
    make_split,
    printable,
    read_lines,
    require_path,
)
from lib.errors import ConfigError, DatasetError

LAYOUT = "R/<class folder>/.../<image> (one sub-folder per class; images found recursively)"
SPLIT_LINE_FORMAT = "'train <class folder name>' or 'eval <class folder name>' ('#' starts a comment)"


def scan_classes(root: str) -> tuple[dict[str, list[str]], list[str]]:
    """Class folder name -> its image paths sorted by path (hidden entries skipped); plus warnings."""
    classes, warnings = {}, []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        paths = []
        for folder, sub_folders, files in os.walk(entry.path):
            sub_folders[:] = [name for name in sub_folders if not name.startswith(".")]
            paths += [os.path.join(folder, name) for name in files if is_image_file(name)]
        if paths:
            classes[entry.name] = sorted(paths)
        else:
            warnings.append(f"folder: class folder {printable(entry.path)} holds no image and is ignored")
    return classes, warnings


def read_split_file(split_file: str, known: set[str]) -> dict[str, str]:
    """Class folder name -> "train" or "eval", as listed in ``--split-file``."""
    if not os.path.isfile(split_file):
        raise ConfigError(f"--split-file {split_file} not found. Give a text file with lines {SPLIT_LINE_FORMAT}.")
    assignment = {}
    for line_no, line in enumerate(read_lines(split_file), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        fields = content.split(maxsplit=1)
        if len(fields) != 2 or fields[0] not in ("train", "eval"):
            raise line_error(split_file, line_no, line, SPLIT_LINE_FORMAT, fix="Correct that line of --split-file.")
        split, name = fields[0], fields[1].strip()
        if name not in known:
            raise DatasetError(
                f"{split_file}, line {line_no}: class {name!r} is not a sub-folder with images of the dataset "
                "folder. Fix the name or remove the line."
            )
        if name in assignment:
            raise DatasetError(f"{split_file}, line {line_no}: class {name!r} is listed twice. Keep one line.")
        assignment[name] = split
    return assignment


def load_folder(dataset_dir: str | Path, split_file: str | None = None) -> LoadedDataset:
    root = os.path.abspath(dataset_dir)
    require_path(root, "dataset", "folder", LAYOUT, is_dir=True)
    classes, warnings = scan_classes(root)
    names = list(classes)
    if split_file is None:
        assignment = {name: "train" if k < len(names) // 2 else "eval" for k, name in enumerate(names)}
    else:
        assignment = read_split_file(split_file, set(names))
        unlisted = [name for name in names if name not in assignment]
        if unlisted:
            warnings.append(
                f"folder: {len(unlisted)} class folder(s) not listed in {split_file} are ignored: "
                f"{list_files(unlisted)}"
            )
    splits = {
        split: _class_split(split, [n for n in names if assignment.get(n) == split], classes)
        for split in ("train", "eval")
    }
    for split in splits.values():
        if split.n_classes < 2:
            source = f"--split-file {split_file}" if split_file else f"the first half of the {len(names)} classes"
            raise DatasetError(
                f"folder: the {split.name} split ({source}) has {split.n_classes} class(es) with images under "
                f"{root}; each split needs at least 2. Expected layout: {LAYOUT}"
            )
    return LoadedDataset("folder", root, splits, warnings, layout=LAYOUT, info={"split_file": split_file})


def _class_split(name: str, class_names: list[str], classes: dict[str, list[str]]) -> Split:
    paths = [path for class_name in class_names for path in classes[class_name]]
    ids = [k for k, class_name in enumerate(class_names) for _ in classes[class_name]]
    return make_split(name, paths, ids, names=lambda k: class_names[k], label_space=range(len(class_names)))
