"""Tiny datasets in the exact on-disk layouts of METHOD.md §7, for dataset, verify and end-to-end tests.

Each builder writes under ``root`` and returns the directory to pass as ``--dataset-dir``. Every class has its
own mean colour (plus noise), so a network can actually learn to tell the classes apart in end-to-end tests.
Images are small JPEGs; ``size`` is (height, width).
"""

from pathlib import Path

import cv2
import numpy as np
import scipy.io

Size = tuple[int, int]


def write_image(path: Path, colour: np.ndarray, size: Size, rng: np.random.Generator) -> None:
    """A JPEG of one colour plus noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(-40, 41, size=(*size, 3))
    image = np.clip(colour[None, None, :] + noise, 0, 255).astype(np.uint8)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def class_colours(n_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(30, 226, size=(n_classes, 3))


def write_junk(folder: Path) -> None:
    """Files a real download may contain that parsers must skip: macOS forks, .DS_Store, notes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "._resource_fork.jpg").write_bytes(b"\x00\x05\x16\x07 not an image")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "notes.txt").write_text("not an image\n")


def make_cub(root, n_classes: int = 6, per_class: int = 4, size: Size = (30, 40), seed: int = 0) -> Path:
    """R/cub-200-2011/images/NNN.Name/Name_XXXX.jpg, with junk files and a hidden folder to skip."""
    rng = np.random.default_rng(seed)
    colours = class_colours(n_classes, rng)
    images = Path(root) / "cub-200-2011" / "images"
    for k in range(n_classes):
        folder = images / f"{k + 1:03d}.Bird_{k}"
        for i in range(per_class):
            write_image(folder / f"Bird_{k}_{i:04d}_{100 + i}.jpg", colours[k], size, rng)
    write_junk(images / f"{1:03d}.Bird_0")
    write_junk(images / ".hidden_folder")
    return Path(root)


def make_cars(root, n_classes: int = 6, per_class: int = 4, size: Size = (30, 40), seed: int = 0) -> Path:
    """R/cars196/car_ims/NNNNNN.jpg and a real ``cars_annos.mat`` (1×N struct array ``annotations``).

    Records interleave the classes, as image order and class order need not agree.
    """
    rng = np.random.default_rng(seed)
    colours = class_colours(n_classes, rng)
    base = Path(root) / "cars196"
    classes = np.tile(np.arange(1, n_classes + 1), per_class)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, classes.size), dtype=[(name, object) for name in fields])
    for i, cls in enumerate(classes):
        relative = f"car_ims/{i + 1:06d}.jpg"
        write_image(base / relative, colours[cls - 1], size, rng)
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, size[1] - 1, size[0] - 1)]
        annotations[0, i] = (relative, *box, np.array([[cls]], dtype=np.uint8), np.array([[i % 2]], dtype=np.uint8))
    class_names = np.empty((1, n_classes), dtype=object)
    class_names[0, :] = [f"Maker Model {k + 1} 2012" for k in range(n_classes)]
    scipy.io.savemat(base / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return Path(root)


def make_sop(
    root, n_train_classes: int = 3, n_eval_classes: int = 3, per_class: int = 4, size: Size = (30, 40), seed: int = 0
) -> Path:
    """R/sop/Ebay_train.txt, Ebay_test.txt and <category>_final/<id>_<k>.JPG; class ids 1… train, then eval."""
    rng = np.random.default_rng(seed)
    n_classes = n_train_classes + n_eval_classes
    colours = class_colours(n_classes, rng)
    base = Path(root) / "sop"
    for file_name, class_ids in (
        ("Ebay_train.txt", range(1, n_train_classes + 1)),
        ("Ebay_test.txt", range(n_train_classes + 1, n_classes + 1)),
    ):
        lines = ["image_id class_id super_class_id path"]
        for class_id in class_ids:
            super_id = 1 + class_id % 2
            category = ("bicycle_final", "chair_final")[super_id - 1]
            for k in range(per_class):
                relative = f"{category}/{100000 + class_id}_{k}.JPG"
                write_image(base / relative, colours[class_id - 1], size, rng)
                lines.append(f"{len(lines)} {class_id} {super_id} {relative}")
        (base / file_name).write_text("\n".join(lines) + "\n")
    return Path(root)


def make_inshop(
    root,
    n_train_ids: int = 3,
    n_eval_ids: int = 3,
    train_per_id: int = 4,
    query_per_id: int = 2,
    gallery_per_id: int = 2,
    size: Size = (30, 40),
    seed: int = 0,
) -> Path:
    """R/in-shop/Eval/list_eval_partition.txt and img/.../id_XXXXXXXX/*.jpg; train and eval ids interleave."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "in-shop"
    train_ids = [3 * k + 1 for k in range(n_train_ids)]
    eval_ids = [3 * k + 2 for k in range(n_eval_ids)]
    colours = class_colours(3 * max(n_train_ids, n_eval_ids) + 3, rng)
    entries = []
    for raw_id, statuses in [(i, ["train"] * train_per_id) for i in train_ids] + [
        (i, ["query"] * query_per_id + ["gallery"] * gallery_per_id) for i in eval_ids
    ]:
        for k, status in enumerate(statuses):
            relative = f"img/WOMEN/Dresses/id_{raw_id:08d}/{k + 1:02d}_1_front.jpg"
            write_image(base / relative, colours[raw_id], size, rng)
            entries.append(f"{relative} id_{raw_id:08d} {status}")
    order = rng.permutation(len(entries))
    lines = [str(len(entries)), "image_name item_id evaluation_status", *(entries[i] for i in order)]
    (base / "Eval").mkdir(parents=True, exist_ok=True)
    (base / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return Path(root)


def make_vid(
    root,
    n_train_ids: int = 4,
    n_test_ids: tuple[int, int, int] = (2, 3, 4),
    per_id: int = 3,
    size: Size = (30, 40),
    seed: int = 0,
) -> Path:
    """R/vehicle-id/VehicleID_V1.0/{image/*.jpg, train_test_split/*.txt}; nested test lists (small ⊂ medium ⊂
    large), lines in shuffled order and vehicle ids whose string order differs from their integer order."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "vehicle-id" / "VehicleID_V1.0"
    train_ids = [2 + 7 * k for k in range(n_train_ids)]
    test_ids = [5 + 7 * k for k in range(max(n_test_ids))]
    colours = class_colours(7 * (n_train_ids + max(n_test_ids)) + 7, rng)
    names = {}
    for vehicle_id in train_ids + test_ids:
        names[vehicle_id] = [f"{vehicle_id:05d}{k:02d}" for k in range(per_id)]
        for name in names[vehicle_id]:
            write_image(base / "image" / f"{name}.jpg", colours[vehicle_id], size, rng)
    lists = {"train_list.txt": train_ids}
    lists.update({f"test_list_{800 * (j + 1)}.txt": test_ids[:n] for j, n in enumerate(n_test_ids)})
    (base / "train_test_split").mkdir(parents=True, exist_ok=True)
    for file_name, ids in lists.items():
        lines = [f"{name} {vehicle_id}" for vehicle_id in ids for name in names[vehicle_id]]
        (base / "train_test_split" / file_name).write_text("\n".join(lines[i] for i in rng.permutation(len(lines))))
    return Path(root)


def make_folder(root, n_classes: int = 6, per_class: int = 4, size: Size = (30, 40), seed: int = 0) -> Path:
    """R/<class>/... with half of each class's images in a sub-folder, plus hidden and non-image files."""
    rng = np.random.default_rng(seed)
    colours = class_colours(n_classes, rng)
    base = Path(root)
    for k in range(n_classes):
        for i in range(per_class):
            sub = "views/" if i % 2 else ""
            write_image(base / f"class_{k:02d}" / f"{sub}img_{i:03d}.png", colours[k], size, rng)
    write_junk(base / "class_00")
    write_junk(base / "class_00" / ".thumbnails")
    write_junk(base / ".trash")
    return base
