"""In-Shop Clothes (METHOD.md §7.5): ``Eval/list_eval_partition.txt`` assigns each image to train/query/gallery.

Query and gallery share one label space (ids remapped jointly), so a query's label names its gallery matches.
"""

import os
import re
from pathlib import Path

from dataset.base import LoadedDataset, count_warnings, line_error, make_split, parse_int, read_lines, require_path
from lib.errors import DatasetError

LAYOUT = (
    "R/in-shop/Eval/list_eval_partition.txt (line 1: number of entries; line 2: header; then "
    "'image_path item_id evaluation_status' per line) and images at R/in-shop/img/..."
)
EXPECTED = {"train": (25882, 3997), "query": (14218, 3985), "gallery": (12612, 3985)}
EXPECTED_ENTRIES = 52712
LINE_FORMAT = "'image_path item_id evaluation_status' with item_id like id_00000001 and status train/query/gallery"
ITEM_ID = re.compile(r"id_([0-9]+)")
STATUSES = ("train", "query", "gallery")


def inshop_root(dataset_dir: str | Path) -> str:
    return os.path.join(os.path.abspath(dataset_dir), "in-shop")


def read_partition(list_path: str, root: str) -> tuple[dict[str, tuple[list[str], list[int]]], list[str]]:
    """Per status: (absolute image paths, raw item ids); plus warnings about the entry count."""
    lines = read_lines(list_path)
    announced = parse_int(lines[0].strip()) if lines else None
    if announced is None or announced < 0:
        raise line_error(list_path, 1, lines[0] if lines else "", "the number of entries")
    entries = {status: ([], []) for status in STATUSES}
    n_entries = 0
    for line_no, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        fields = line.split()
        match = ITEM_ID.fullmatch(fields[1]) if len(fields) == 3 else None
        item_id = parse_int(match.group(1)) if match else None
        if item_id is None or fields[2] not in entries:
            raise line_error(list_path, line_no, line, LINE_FORMAT)
        paths, ids = entries[fields[2]]
        paths.append(os.path.join(root, fields[0]))
        ids.append(item_id)
        n_entries += 1
    warnings = []
    if n_entries != announced:
        warnings.append(f"inshop: {list_path} announces {announced} entries on line 1 but lists {n_entries}")
    if n_entries != EXPECTED_ENTRIES:
        warnings.append(f"inshop: expected {EXPECTED_ENTRIES} entries in total, found {n_entries}")
    return entries, warnings


def load_inshop(dataset_dir: str | Path) -> LoadedDataset:
    """Train ids remapped to 0…3996 in sorted order; query and gallery ids remapped jointly to 0…3984."""
    root = inshop_root(dataset_dir)
    require_path(root, "dataset", "inshop", LAYOUT, is_dir=True)
    list_path = os.path.join(root, "Eval", "list_eval_partition.txt")
    require_path(list_path, "annotation", "inshop", LAYOUT, is_dir=False)
    entries, warnings = read_partition(list_path, root)
    if not entries["train"][0]:
        raise DatasetError(f"inshop: {list_path} lists no training image. Expected layout: {LAYOUT}")
    splits = {"train": make_split("train", *entries["train"], names=item_name)}
    query_ids, gallery_ids = (set(entries[status][1]) for status in ("query", "gallery"))
    joint = sorted(query_ids | gallery_ids)
    for status in ("query", "gallery"):
        splits[status] = make_split(status, *entries[status], names=item_name, label_space=joint)
    if query_ids != gallery_ids:
        warnings.append(
            f"inshop: query and gallery hold different item ids ({len(query_ids)} query ids, {len(gallery_ids)} "
            f"gallery ids, {len(query_ids & gallery_ids)} in both); queries without a gallery match count as misses"
        )
    warnings += count_warnings("inshop", splits, EXPECTED)
    return LoadedDataset("inshop", root, splits, warnings, layout=LAYOUT)


def item_name(raw_id: int) -> str:
    return f"id_{raw_id:08d}"
