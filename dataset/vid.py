"""PKU VehicleID (METHOD.md §7.6): one training list and three nested test lists (small, medium, large)."""

import os
from pathlib import Path

from dataset.base import LoadedDataset, count_warnings, line_error, make_split, parse_int, read_lines, require_path

LAYOUT = (
    "R/vehicle-id/VehicleID_V1.0/train_test_split/{train_list,test_list_800,test_list_1600,test_list_2400}.txt "
    "('<image name> <vehicle id>' per line) and images at R/vehicle-id/VehicleID_V1.0/image/<image name>.jpg"
)
LISTS = {
    "train": "train_list.txt",
    "small": "test_list_800.txt",
    "medium": "test_list_1600.txt",
    "large": "test_list_2400.txt",
}
EXPECTED = {"train": (113346, 13164), "small": (7332, 800), "medium": (12995, 1600), "large": (20038, 2400)}
LINE_FORMAT = "'<image name> <vehicle id>' with an integer vehicle id"


def vid_root(dataset_dir: str | Path) -> str:
    return os.path.join(os.path.abspath(dataset_dir), "vehicle-id", "VehicleID_V1.0")


def read_list(list_path: str, root: str) -> tuple[list[str], list[int]]:
    """(absolute image paths, vehicle ids) of one list."""
    paths, vehicle_ids = [], []
    for line_no, line in enumerate(read_lines(list_path), start=1):
        if not line.strip():
            continue
        fields = line.split()
        vehicle_id = parse_int(fields[1]) if len(fields) == 2 else None
        if vehicle_id is None or vehicle_id < 0:
            raise line_error(list_path, line_no, line, LINE_FORMAT)
        paths.append(os.path.join(root, "image", fields[0] + ".jpg"))
        vehicle_ids.append(vehicle_id)
    return paths, vehicle_ids


def load_vid(dataset_dir: str | Path) -> LoadedDataset:
    """Each list is labelled 0…n−1 on its own, in increasing integer order of the vehicle ids."""
    root = vid_root(dataset_dir)
    require_path(root, "dataset", "vid", LAYOUT, is_dir=True)
    splits = {}
    for name, file_name in LISTS.items():
        list_path = os.path.join(root, "train_test_split", file_name)
        require_path(list_path, "list", "vid", LAYOUT, is_dir=False)
        splits[name] = make_split(name, *read_list(list_path, root))
    return LoadedDataset("vid", root, splits, count_warnings("vid", splits, EXPECTED), layout=LAYOUT)
