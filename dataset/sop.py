"""Stanford Online Products (METHOD.md §7.4): ``Ebay_train.txt`` and ``Ebay_test.txt`` list the two splits.

Paths in the lists are joined to the root as given, never searched for a ``sop/`` substring, so any root path
works (the original broke on roots containing ``sop/``, §10 #28).
"""

import os
from pathlib import Path

from dataset.base import LoadedDataset, count_warnings, line_error, make_split, parse_int, read_lines, require_path

LAYOUT = (
    "R/sop/Ebay_train.txt and R/sop/Ebay_test.txt (a header line, then 'image_id class_id super_class_id path' "
    "per line, path relative to R/sop, e.g. bicycle_final/111085122871_0.JPG)"
)
EXPECTED = {"train": (59551, 11318), "eval": (60502, 11316)}
LINE_FORMAT = "'image_id class_id super_class_id path' (three integers from 1 and a relative path)"


def sop_root(dataset_dir: str | Path) -> str:
    return os.path.join(os.path.abspath(dataset_dir), "sop")


def read_list(list_path: str, root: str) -> tuple[list[str], list[int]]:
    """(absolute image paths, class ids) of one Ebay list; the header line is skipped."""
    paths, class_ids = [], []
    for line_no, line in enumerate(read_lines(list_path)[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(maxsplit=3)
        numbers = [parse_int(field) for field in fields[:3]]
        if len(fields) != 4 or None in numbers or min(numbers) < 1:
            raise line_error(list_path, line_no, line, LINE_FORMAT)
        class_ids.append(numbers[1])
        paths.append(os.path.join(root, fields[3].strip()))
    return paths, class_ids


def load_sop(dataset_dir: str | Path) -> LoadedDataset:
    """Label = class_id − 1 in train (0–11317); eval labels are the same ids shifted to start at 0."""
    root = sop_root(dataset_dir)
    require_path(root, "dataset", "sop", LAYOUT, is_dir=True)
    splits = {}
    for name, file_name in (("train", "Ebay_train.txt"), ("eval", "Ebay_test.txt")):
        list_path = os.path.join(root, file_name)
        require_path(list_path, "annotation", "sop", LAYOUT, is_dir=False)
        paths, class_ids = read_list(list_path, root)
        splits[name] = make_split(name, paths, class_ids)
    return LoadedDataset("sop", root, splits, count_warnings("sop", splits, EXPECTED), layout=LAYOUT)
