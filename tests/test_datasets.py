"""Dataset parsers, the registry, class subsets and the image loading of dataset/ (METHOD.md §7, §2.3)."""

import os
import pickle
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from dataset.base import ImageDataset, Split, load_rgb
from dataset.loader import make_eval_loader
from dataset.registry import load_dataset, parse_dataset
from dataset.subsets import apply_ratio_classes, carve_validation, ratio_class_count
from experiment.build import build_data
from experiment.config import parse_config
from lib.errors import ConfigError, DatasetError
from tests.fixtures_datasets import make_cars, make_cub, make_folder, make_inshop, make_sop, make_vid

# ---------------------------------------------------------------- per-dataset parsing


def test_cub_labels_split_order_and_skipped_files(tmp_path):
    make_cub(tmp_path, n_classes=5, per_class=3)
    ds = load_dataset("cub", tmp_path)
    images = tmp_path / "cub-200-2011" / "images"
    assert ds.root == str(images)
    assert list(ds.splits) == ["train", "eval"]
    train, evaluation = ds.splits["train"], ds.splits["eval"]
    assert train.class_names == ("001.Bird_0", "002.Bird_1")  # floor(5 / 2) classes train
    assert evaluation.class_names == ("003.Bird_2", "004.Bird_3", "005.Bird_4")
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert evaluation.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expected = [str(images / "001.Bird_0" / f"Bird_0_{i:04d}_{100 + i}.jpg") for i in range(3)]
    assert list(train.images[:3]) == expected  # sorted by name; ._*.jpg, .DS_Store and notes.txt skipped
    assert all(os.path.isabs(path) for path in evaluation.images)
    assert "cub train: expected 5864 images, found 6" in ds.warnings
    assert "cub eval: expected 100 classes, found 3" in ds.warnings


def test_cub_full_class_count_splits_at_label_100(tmp_path):
    make_cub(tmp_path, n_classes=200, per_class=1, size=(8, 8))
    ds = parse_dataset("cub", tmp_path)
    assert ds.splits["train"].class_names[-1] == "100.Bird_99"
    assert ds.splits["eval"].class_names[0] == "101.Bird_100"
    assert not any("classes" in warning for warning in ds.warnings)


def test_cars_reads_the_mat_file_and_splits_by_class(tmp_path):
    make_cars(tmp_path, n_classes=4, per_class=3)
    ds = load_dataset("cars", tmp_path)
    train, evaluation = ds.splits["train"], ds.splits["eval"]
    # Records interleave classes 1,2,3,4,1,2,...: classes 1-2 train (label = class - 1), 3-4 eval.
    assert train.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert [os.path.basename(p) for p in train.images] == [f"{i:06d}.jpg" for i in (1, 2, 5, 6, 9, 10)]
    assert evaluation.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert evaluation.class_names == ("Maker Model 3 2012", "Maker Model 4 2012")
    assert "cars: expected 16185 annotation records, found 12" in ds.warnings


def test_cub_empty_class_folder_keeps_the_split_at_half_the_folders(tmp_path):
    make_cub(tmp_path, n_classes=6, per_class=2)
    emptied = tmp_path / "cub-200-2011" / "images" / "005.Bird_4"
    for image in emptied.iterdir():
        image.unlink()
    ds = parse_dataset("cub", tmp_path)
    assert ds.splits["train"].class_names == ("001.Bird_0", "002.Bird_1", "003.Bird_2")
    assert ds.splits["eval"].class_names == ("004.Bird_3", "006.Bird_5")
    assert f"cub: class folder {emptied} holds no image" in ds.warnings


def test_cars_class_without_records_keeps_the_split_by_class_number(tmp_path):
    make_cars(tmp_path, n_classes=6, per_class=2)
    mat_path = tmp_path / "cars196" / "cars_annos.mat"
    mat = scipy.io.loadmat(mat_path)
    kept = np.array([int(np.squeeze(cls)) != 5 for cls in mat["annotations"]["class"][0]])
    scipy.io.savemat(mat_path, {"annotations": mat["annotations"][:, kept], "class_names": mat["class_names"]})
    ds = parse_dataset("cars", tmp_path)
    assert ds.splits["train"].class_names == ("Maker Model 1 2012", "Maker Model 2 2012", "Maker Model 3 2012")
    assert ds.splits["eval"].class_names == ("Maker Model 4 2012", "Maker Model 6 2012")


@pytest.mark.parametrize("cls", [0, -3, 197])
def test_cars_class_outside_1_to_196_names_the_record(tmp_path, cls):
    make_cars(tmp_path, n_classes=4, per_class=2)
    mat_path = tmp_path / "cars196" / "cars_annos.mat"
    mat = scipy.io.loadmat(mat_path)
    mat["annotations"]["class"][0, 2] = np.array([[cls]], dtype=np.int16)
    scipy.io.savemat(mat_path, {"annotations": mat["annotations"], "class_names": mat["class_names"]})
    with pytest.raises(DatasetError, match=f"annotation record 3: class {cls} is outside 1…196"):
        parse_dataset("cars", tmp_path)


def test_cars_single_record_and_missing_class_names(tmp_path):
    base = tmp_path / "cars196"
    base.mkdir()
    annotations = np.zeros((1, 1), dtype=[("relative_im_path", object), ("class", object)])
    annotations[0, 0] = ("car_ims/000001.jpg", np.array([[7]], dtype=np.uint8))
    scipy.io.savemat(base / "cars_annos.mat", {"annotations": annotations})
    ds = parse_dataset("cars", tmp_path)
    assert len(ds.splits["train"]) == 0
    assert ds.splits["eval"].class_names == ("7",)
    assert ds.splits["eval"].images[0] == str(base / "car_ims" / "000001.jpg")


def test_cars_bad_mat_files(tmp_path):
    base = tmp_path / "cars196"
    base.mkdir()
    with pytest.raises(DatasetError, match="cars_annos.mat"):
        parse_dataset("cars", tmp_path)
    (base / "cars_annos.mat").write_bytes(b"garbage, not a MATLAB file")
    with pytest.raises(DatasetError, match="cannot read"):
        parse_dataset("cars", tmp_path)
    scipy.io.savemat(base / "cars_annos.mat", {"something_else": np.zeros(3)})
    with pytest.raises(DatasetError, match="'annotations'"):
        parse_dataset("cars", tmp_path)


def test_sop_labels_and_root_containing_sop_twice(tmp_path):
    dataset_dir = tmp_path / "sop" / "data"
    make_sop(dataset_dir, n_train_classes=2, n_eval_classes=3, per_class=2)
    ds = load_dataset("sop", dataset_dir)
    root = dataset_dir / "sop"
    train, evaluation = ds.splits["train"], ds.splits["eval"]
    assert train.labels.tolist() == [0, 0, 1, 1]  # class_id - 1
    assert train.class_names == ("1", "2")
    assert evaluation.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert evaluation.class_names == ("3", "4", "5")
    assert train.images[0] == str(root / "chair_final" / "100001_0.JPG")


@pytest.mark.parametrize("line", ["3 four 1 chair_final/x.JPG", "3 0 1 chair_final/x.JPG", "3 -5 1 chair_final/x.JPG"])
def test_sop_unparsable_line_names_file_and_line(tmp_path, line):
    make_sop(tmp_path, per_class=2)
    path = tmp_path / "sop" / "Ebay_test.txt"
    lines = path.read_text().splitlines()
    lines[3] = line
    path.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=r"Ebay_test\.txt, line 4: .*three integers from 1 .*dataset archive"):
        parse_dataset("sop", tmp_path)


def test_sop_missing_list_file(tmp_path):
    make_sop(tmp_path, per_class=2)
    (tmp_path / "sop" / "Ebay_train.txt").unlink()
    with pytest.raises(DatasetError, match=r"Ebay_train\.txt not found"):
        parse_dataset("sop", tmp_path)


def _inshop_labels(split: Split) -> dict[str, set[int]]:
    """Item folder name -> the labels of its images, read back from the paths."""
    found: dict[str, set[int]] = {}
    for path, label in zip(split.images, split.labels.tolist(), strict=True):
        found.setdefault(Path(path).parent.name, set()).add(label)
    return found


def test_inshop_remaps_train_and_joint_query_gallery_ids(tmp_path):
    make_inshop(tmp_path, n_train_ids=3, n_eval_ids=2, train_per_id=2, query_per_id=1, gallery_per_id=2)
    ds = load_dataset("inshop", tmp_path)
    assert list(ds.splits) == ["train", "query", "gallery"]
    # train raw ids 1, 4, 7 -> 0, 1, 2; eval raw ids 2, 5 -> 0, 1 in both query and gallery
    assert _inshop_labels(ds.splits["train"]) == {"id_00000001": {0}, "id_00000004": {1}, "id_00000007": {2}}
    assert _inshop_labels(ds.splits["query"]) == {"id_00000002": {0}, "id_00000005": {1}}
    assert _inshop_labels(ds.splits["gallery"]) == {"id_00000002": {0}, "id_00000005": {1}}
    assert ds.splits["query"].class_names == ds.splits["gallery"].class_names == ("id_00000002", "id_00000005")
    assert len(ds.splits["query"]) == 2 and len(ds.splits["gallery"]) == 4
    assert not any("different item ids" in warning for warning in ds.warnings)


def test_inshop_query_gallery_mismatch_warns_and_shares_label_space(tmp_path):
    make_inshop(tmp_path, n_train_ids=2, n_eval_ids=2, train_per_id=1, query_per_id=1, gallery_per_id=1)
    path = tmp_path / "in-shop" / "Eval" / "list_eval_partition.txt"
    lines = [line for line in path.read_text().splitlines() if not ("id_00000005" in line and "gallery" in line)]
    path.write_text("\n".join(lines))
    ds = parse_dataset("inshop", tmp_path)
    assert any("2 query ids, 1 gallery ids" in warning for warning in ds.warnings)
    assert any("announces 6 entries on line 1 but lists 5" in warning for warning in ds.warnings)
    assert ds.splits["gallery"].n_classes == 2 and ds.splits["gallery"].n_classes_present == 1
    assert _inshop_labels(ds.splits["query"]) == {"id_00000002": {0}, "id_00000005": {1}}


@pytest.mark.parametrize(
    ("line_no", "content", "message"),
    [(1, "many", "line 1"), (4, "img/a.jpg id_00000001 validation", "line 4"), (3, "img/a.jpg item7 train", "line 3")],
)
def test_inshop_bad_lines(tmp_path, line_no, content, message):
    make_inshop(tmp_path, train_per_id=1, query_per_id=1, gallery_per_id=1)
    path = tmp_path / "in-shop" / "Eval" / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    lines[line_no - 1] = content
    path.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=rf"list_eval_partition\.txt, {message}\b"):
        parse_dataset("inshop", tmp_path)


def test_vid_lists_are_remapped_by_integer_vehicle_id(tmp_path):
    make_vid(tmp_path, n_train_ids=4, n_test_ids=(2, 3, 4), per_id=2)
    ds = load_dataset("vid", tmp_path)
    assert list(ds.splits) == ["train", "small", "medium", "large"]
    train = ds.splits["train"]
    assert train.class_names == ("2", "9", "16", "23")  # integer order, not string order
    by_name = {Path(p).name: label for p, label in zip(train.images, train.labels.tolist(), strict=True)}
    assert by_name == {"0000200.jpg": 0, "0000201.jpg": 0, "0000900.jpg": 1, "0000901.jpg": 1,
                       "0001600.jpg": 2, "0001601.jpg": 2, "0002300.jpg": 3, "0002301.jpg": 3}  # fmt: skip
    assert [len(ds.splits[s]) for s in ("small", "medium", "large")] == [4, 6, 8]
    assert ds.splits["small"].class_names == ("5", "12")
    assert ds.splits["large"].class_names == ("5", "12", "19", "26")
    assert train.images[0].startswith(str(tmp_path / "vehicle-id" / "VehicleID_V1.0" / "image") + os.sep)


def test_vid_bad_line_and_missing_list(tmp_path):
    make_vid(tmp_path, per_id=1)
    split_dir = tmp_path / "vehicle-id" / "VehicleID_V1.0" / "train_test_split"
    (split_dir / "test_list_1600.txt").write_text("0000500 5\n0000501 five\n")
    with pytest.raises(DatasetError, match=r"test_list_1600\.txt, line 2"):
        parse_dataset("vid", tmp_path)
    (split_dir / "test_list_2400.txt").unlink()
    (split_dir / "test_list_1600.txt").write_text("0000500 5\n")
    with pytest.raises(DatasetError, match=r"test_list_2400\.txt not found"):
        parse_dataset("vid", tmp_path)


def test_folder_default_split_recursive_and_hidden_skipped(tmp_path):
    make_folder(tmp_path, n_classes=5, per_class=4)
    ds = load_dataset("folder", tmp_path)
    train, evaluation = ds.splits["train"], ds.splits["eval"]
    assert train.class_names == ("class_00", "class_01")
    assert evaluation.class_names == ("class_02", "class_03", "class_04")
    expected = ["img_000.png", "img_002.png", "views/img_001.png", "views/img_003.png"]  # sorted by path
    assert list(train.images[:4]) == [str(tmp_path / "class_00" / name) for name in expected]
    assert len(train) == 8 and len(evaluation) == 12
    assert ds.warnings == []


def test_folder_split_file(tmp_path):
    make_folder(tmp_path / "data", n_classes=6, per_class=2)
    split_file = tmp_path / "split.txt"
    split_file.write_text("# my split\neval class_00\ntrain class_05  # last\n\ntrain class_02\neval class_03\n")
    ds = load_dataset("folder", tmp_path / "data", split_file=str(split_file))
    assert ds.splits["train"].class_names == ("class_02", "class_05")
    assert ds.splits["eval"].class_names == ("class_00", "class_03")
    assert ds.warnings == [f"folder: 2 class folder(s) not listed in {split_file} are ignored: class_01, class_04"]


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("train class_00\ntrain class_09\n", DatasetError, r"line 2: class 'class_09' is not a sub-folder"),
        ("train class_00\nvalidate class_01\n", DatasetError, r"split\.txt, line 2: cannot parse.* Correct that line"),
        ("train class_00\ntrain class_00\n", DatasetError, "listed twice"),
        ("train class_00\ntrain class_01\neval class_02\n", DatasetError, "eval split .* has 1 class"),
    ],
)
def test_folder_bad_split_files(tmp_path, content, error, message):
    make_folder(tmp_path / "data", n_classes=4, per_class=1)
    split_file = tmp_path / "split.txt"
    split_file.write_text(content)
    with pytest.raises(error, match=message):
        parse_dataset("folder", tmp_path / "data", split_file=str(split_file))


def test_folder_needs_two_classes_per_split_and_existing_split_file(tmp_path):
    make_folder(tmp_path, n_classes=3, per_class=1)
    with pytest.raises(DatasetError, match="train split .* has 1 class"):
        parse_dataset("folder", tmp_path)
    with pytest.raises(ConfigError, match="--split-file"):
        parse_dataset("folder", tmp_path, split_file=str(tmp_path / "absent.txt"))


# ---------------------------------------------------------------- registry errors


@pytest.mark.parametrize(
    ("name", "folder"),
    [("cub", "cub-200-2011/images"), ("cars", "cars196"), ("sop", "sop"), ("inshop", "in-shop"),
     ("vid", "vehicle-id/VehicleID_V1.0"), ("folder", "")],
)  # fmt: skip
def test_missing_root_names_folder_and_layout(tmp_path, name, folder):
    dataset_dir = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_dataset(name, dataset_dir)
    message = str(info.value)
    assert str(dataset_dir / folder).rstrip("/") in message
    assert "Expected layout" in message


def test_unknown_dataset_and_misplaced_split_file(tmp_path):
    with pytest.raises(ConfigError, match="cub, cars, sop, inshop, vid, folder, glyphs"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ConfigError, match="--split-file applies only to --dataset folder"):
        load_dataset("cub", tmp_path, split_file="split.txt")


def test_missing_images_are_listed_with_their_count(tmp_path):
    make_sop(tmp_path, n_train_classes=2, n_eval_classes=2, per_class=4)
    removed = sorted((tmp_path / "sop").rglob("*.JPG"))[:7]
    for path in removed:
        path.unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("sop", tmp_path)
    message = str(info.value)
    assert "7 image(s)" in message and "and 2 more" in message
    assert sum(str(path) in message for path in removed) == 5


def test_check_images_finds_corrupt_files(tmp_path):
    make_cub(tmp_path, n_classes=4, per_class=2)
    corrupt = tmp_path / "cub-200-2011" / "images" / "003.Bird_2" / "Bird_2_0001_101.jpg"
    corrupt.write_bytes(b"")
    load_dataset("cub", tmp_path)  # existence only
    with pytest.raises(DatasetError, match=str(corrupt)):
        load_dataset("cub", tmp_path, check_images=True)


@pytest.mark.parametrize(
    ("name", "make", "lists"),
    [
        ("sop", make_sop, ["sop/Ebay_train.txt", "sop/Ebay_test.txt"]),
        ("inshop", make_inshop, ["in-shop/Eval/list_eval_partition.txt"]),
        ("vid", make_vid, ["vehicle-id/VehicleID_V1.0/train_test_split/train_list.txt"]),
    ],
)
def test_list_files_with_a_byte_order_mark_and_windows_line_ends_parse_alike(tmp_path, name, make, lists):
    make(tmp_path / "plain")
    make(tmp_path / "windows")
    for relative in lists:
        path = tmp_path / "windows" / relative
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    plain, windows = (load_dataset(name, tmp_path / kind).splits for kind in ("plain", "windows"))
    assert list(plain) == list(windows)
    for split in plain:
        assert windows[split].labels.tolist() == plain[split].labels.tolist()
        assert [p.replace("windows", "plain") for p in windows[split].images] == list(plain[split].images)


def test_repeated_images_and_classes_shared_with_train_are_warned_about(tmp_path):
    make_sop(tmp_path, n_train_classes=3, n_eval_classes=3, per_class=2)
    train_list, test_list = tmp_path / "sop" / "Ebay_train.txt", tmp_path / "sop" / "Ebay_test.txt"
    train_lines = train_list.read_text().splitlines()
    test_lines = test_list.read_text().splitlines()
    test_list.write_text("\n".join([*test_lines, test_lines[1], train_lines[1]]) + "\n")  # a repeat, a train image
    warnings = parse_dataset("sop", tmp_path).warnings
    root = tmp_path / "sop"
    repeated = root / test_lines[1].split()[3]
    assert f"sop eval: 1 image(s) listed more than once, e.g. {repeated}; each listing counts as a separate image" in (
        warnings
    )
    assert "sop: 1 class(es) of train also in eval, e.g. 1; the splits should share no class" in warnings
    assert f"sop: 1 image(s) of train also in eval, e.g. {root / train_lines[1].split()[3]}" in warnings


def test_an_image_that_is_both_query_and_gallery_is_warned_about(tmp_path):
    make_inshop(tmp_path)
    partition = tmp_path / "in-shop" / "Eval" / "list_eval_partition.txt"
    lines = partition.read_text().splitlines()
    query = next(line for line in lines[2:] if line.endswith(" query"))
    partition.write_text("\n".join([str(len(lines) - 1), *lines[1:], query.replace(" query", " gallery")]) + "\n")
    warnings = parse_dataset("inshop", tmp_path).warnings
    assert f"inshop: 1 image(s) of query also in gallery, e.g. {tmp_path / 'in-shop' / query.split()[0]}" in warnings


def test_clean_lists_give_no_overlap_warning(tmp_path):
    make_sop(tmp_path / "sop")
    make_inshop(tmp_path / "inshop")
    make_vid(tmp_path / "vid")
    for name, root in (("sop", "sop"), ("inshop", "inshop"), ("vid", "vid")):
        warnings = parse_dataset(name, tmp_path / root).warnings
        assert not any("also in" in w or "more than once" in w for w in warnings), (name, warnings)


def test_an_unreadable_image_met_by_a_loader_worker_is_one_message_without_the_workers_traceback(tmp_path):
    make_cub(tmp_path, n_classes=4, per_class=2)
    evaluation = load_dataset("cub", tmp_path).splits["eval"]
    corrupt = Path(evaluation.images[1])
    corrupt.write_bytes(b"not a jpeg")
    dataset = ImageDataset(evaluation, lambda image, _: torch.from_numpy(image[:8, :8].copy()))
    with pytest.raises(DatasetError) as info:
        list(make_eval_loader(dataset, batch_size=2, num_workers=1))
    assert str(info.value) == (
        f"cannot read image {corrupt}: OpenCV cannot decode it. Replace or remove the file, then run again."
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("one eval class", "sop eval: 1 class(es) with images"),
        ("header only", "sop eval: 0 class(es) with images"),
    ],
)
def test_evaluated_splits_without_two_classes_are_refused_before_training(tmp_path, damage, message):
    make_sop(tmp_path, n_train_classes=6, n_eval_classes=1 if damage == "one eval class" else 3)
    if damage == "header only":
        test_list = tmp_path / "sop" / "Ebay_test.txt"
        test_list.write_text(test_list.read_text().splitlines()[0] + "\n")
    flags = ["--experiment", "margin_loss_resnet50", "--dataset", "sop", "--dataset-dir", str(tmp_path)]
    flags += ["--batch-size", "4", "--num-samples-per-class", "2", "--pretrained", "0"]
    with pytest.raises(DatasetError, match=re.escape(message)) as info:
        build_data(parse_config(flags))
    assert "--dataset-dir" in str(info.value)


# ---------------------------------------------------------------- --ratio-classes


@pytest.mark.parametrize(
    ("n", "ratio", "expected"),
    [(5, 0.5, 2), (7, 0.5, 4), (9, 0.5, 4), (11, 0.5, 6), (10, 0.1, 2), (10, 0.01, 2), (200, 0.3, 60), (3, 1.0, 3)],
)
def test_ratio_class_count_rounds_half_to_even_with_a_minimum_of_two(n, ratio, expected):
    assert ratio_class_count(n, ratio) == expected


def test_ratio_classes_keeps_first_classes_of_every_split(tmp_path):
    make_cub(tmp_path, n_classes=14, per_class=2, size=(8, 8))
    ds = load_dataset("cub", tmp_path, ratio_classes=0.5)  # 7 per split -> round(3.5) = 4
    assert ds.splits["train"].class_names == ("001.Bird_0", "002.Bird_1", "003.Bird_2", "004.Bird_3")
    assert ds.splits["eval"].class_names == ("008.Bird_7", "009.Bird_8", "010.Bird_9", "011.Bird_10")
    assert ds.splits["eval"].labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ds.info["classes_before_ratio"] == {"train": 7, "eval": 7}


def test_ratio_classes_only_checks_the_kept_images(tmp_path):
    make_cub(tmp_path, n_classes=8, per_class=2, size=(8, 8))
    (tmp_path / "cub-200-2011" / "images" / "004.Bird_3" / "Bird_3_0000_100.jpg").unlink()
    (tmp_path / "cub-200-2011" / "images" / "004.Bird_3" / "Bird_3_0001_101.jpg").write_bytes(b"broken")
    ds = load_dataset("cub", tmp_path, ratio_classes=0.5, check_images=True)  # keeps classes 0-1 of train
    assert len(ds.splits["train"]) == 4
    with pytest.raises(DatasetError):
        load_dataset("cub", tmp_path, check_images=True)


def test_ratio_classes_inshop_and_vid(tmp_path):
    make_inshop(tmp_path, n_train_ids=5, n_eval_ids=5, train_per_id=1, query_per_id=1, gallery_per_id=1)
    ds = load_dataset("inshop", tmp_path, ratio_classes=0.5)  # round(2.5) = 2
    assert ds.splits["train"].class_names == ("id_00000001", "id_00000004")
    assert ds.splits["query"].class_names == ds.splits["gallery"].class_names == ("id_00000002", "id_00000005")
    assert set(ds.splits["query"].labels.tolist()) == set(ds.splits["gallery"].labels.tolist()) == {0, 1}
    make_vid(tmp_path, n_train_ids=6, n_test_ids=(2, 4, 6), per_id=1)
    ds = load_dataset("vid", tmp_path, ratio_classes=0.5)
    assert [ds.splits[s].n_classes for s in ("train", "small", "medium", "large")] == [3, 2, 2, 3]
    assert ds.splits["large"].class_names == ("5", "12", "19")


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_ratio_classes_out_of_range(tmp_path, ratio):
    make_cub(tmp_path, n_classes=4, per_class=1, size=(8, 8))
    with pytest.raises(ConfigError, match="--ratio-classes"):
        apply_ratio_classes(parse_dataset("cub", tmp_path), ratio)


# ---------------------------------------------------------------- validation split and training checks


def _toy_split(n_classes: int, per_class: int = 2) -> Split:
    labels = np.repeat(np.arange(n_classes), per_class)
    return Split("train", [f"/x/{i}.jpg" for i in range(labels.size)], labels, tuple(f"c{k}" for k in range(n_classes)))


@pytest.mark.parametrize(
    ("n", "ratio", "n_val"), [(10, 0.25, 2), (10, 0.3, 3), (10, 0.05, 2), (5, 0.9, 3), (4, 0.5, 2)]
)
def test_carve_validation_sizes_and_relabelling(n, ratio, n_val):
    train = _toy_split(n)
    kept, val = carve_validation(train, ratio, seed=3)
    assert val.name == "val" and kept.name == "train"
    assert val.n_classes == n_val and kept.n_classes == n - n_val
    assert sorted(val.class_names + kept.class_names) == sorted(train.class_names)
    for split in (kept, val):
        assert split.labels.tolist() == np.repeat(np.arange(split.n_classes), 2).tolist()
        # each image keeps its own class: the label's name matches the original one
        original = {path: train.class_names[label] for path, label in zip(train.images, train.labels, strict=True)}
        assert all(original[p] == split.class_names[lbl] for p, lbl in zip(split.images, split.labels, strict=True))
    again = carve_validation(train, ratio, seed=3)[1]
    assert again.class_names == val.class_names


def test_carve_validation_depends_on_the_seed_and_rejects_small_splits():
    train = _toy_split(40)
    draws = {carve_validation(train, 0.25, seed)[1].class_names for seed in range(4)}
    assert len(draws) > 1
    with pytest.raises(DatasetError, match="at least 4 training classes"):
        carve_validation(_toy_split(3), 0.5, seed=0)
    with pytest.raises(ConfigError, match="--val-ratio"):
        carve_validation(train, 1.0, seed=0)


def test_split_subset_select_classes_and_validation():
    split = Split("eval", np.array(["a", "b", "c", "d", "e"]), np.array([0, 2, 1, 2, 0]), ("x", "y", "z"))
    sub = split.subset([4, 1])
    assert list(sub.images) == ["e", "b"] and sub.labels.tolist() == [0, 2] and sub.class_names == split.class_names
    chosen = split.select_classes([2, 0], name="val")
    assert chosen.name == "val" and list(chosen.images) == ["a", "b", "d", "e"]
    assert chosen.labels.tolist() == [1, 0, 0, 1] and chosen.class_names == ("z", "x")
    arrays = Split("g", np.zeros((3, 4, 4), np.uint8), [0, 1, 1], ("p", "q"))
    assert arrays.subset([2]).images.shape == (1, 4, 4)
    with pytest.raises(ValueError, match="labels"):
        Split("bad", ["a"], [3], ("x",))
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        Split("bad", ["a", "b"], [0], ("x",))


def test_load_rgb_converts_bgr_files_and_replicates_grayscale(tmp_path):
    bgr = np.zeros((3, 5, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's channel order
    path = tmp_path / "blue.png"
    cv2.imwrite(str(path), bgr)
    rgb = load_rgb(str(path))
    assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 200]
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(load_rgb(gray), np.stack([gray] * 3, axis=2))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.jpg"):
        load_rgb(str(empty))
    with pytest.raises(DatasetError, match="does not exist"):
        load_rgb(str(tmp_path / "gone.jpg"))
    with pytest.raises(DatasetError, match="float32"):
        load_rgb(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("name", ["tagged.jpg", "tagged-\udcff.jpg"])  # imread, and imdecode for non-UTF-8 names
def test_load_rgb_keeps_the_stored_pixels_of_an_exif_rotated_jpeg_as_pil_does(tmp_path, name):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / name
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(path, exif=exif)
    stored = np.asarray(Image.open(path).convert("RGB"))
    assert stored.shape == (20, 30, 3) and load_rgb(str(path)).shape == (20, 30, 3)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` pixels but holds almost no data: decoders check the size first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    payload = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + payload)


@pytest.mark.parametrize("name", ["huge.png", "huge-\udcff.png"])  # imread, and imdecode for non-UTF-8 names
def test_an_image_beyond_opencvs_pixel_limit_is_one_message_naming_it(tmp_path, name):
    path = tmp_path / name
    _png_header_only(path, 40_000, 30_000)  # 1.2e9 pixels > 2^30
    with pytest.raises(DatasetError, match=r"huge.*OpenCV refused it \(pixels <= CV_IO_MAX_IMAGE_PIXELS\)"):
        load_rgb(str(path))


def shape_and_draw(image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """A transform that reveals the decoded shape and the generator it was given."""
    return torch.tensor([image.shape[0], image.shape[1], image.shape[2], rng.integers(1 << 30)])


def test_image_dataset_items_and_augmentation_seed(tmp_path):
    make_cub(tmp_path, n_classes=2, per_class=2, size=(6, 7))
    split = load_dataset("cub", tmp_path).splits["eval"]

    dataset = ImageDataset(split, shape_and_draw)
    assert len(dataset) == 2
    tensor, label, index = dataset[1]
    assert (label, index) == (0, 1)
    assert tensor[:3].tolist() == [6, 7, 3]
    assert tensor[3] == np.random.default_rng(1).integers(1 << 30)
    seeded, _, index = dataset[(1, 1234)]
    assert index == 1 and seeded[3] == np.random.default_rng(1234).integers(1 << 30)
    copy = pickle.loads(pickle.dumps(dataset))  # loader workers receive the dataset pickled
    assert copy[0][0].tolist() == dataset[0][0].tolist()
