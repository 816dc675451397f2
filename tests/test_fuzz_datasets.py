"""Property-based fuzzing of the dataset annotation parsers and of ``python -m dataset.verify`` (issue 7).

Whatever happens to an annotation file (random bytes, truncation, deleted, duplicated or edited lines), loading
either yields a usable dataset (dense labels, existing images) or raises a DatasetError/ConfigError that names the
file and, for a line that does not parse, "line N" with the right N. The expected outcome of each damaged text file
comes from the small reference readers below, which restate the formats of METHOD.md §7.4–7.6 line by line.
"""

import contextlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from dataset import verify
from dataset.base import LoadedDataset
from dataset.registry import load_dataset
from lib.errors import ConfigError, DatasetError
from tests.fixtures_datasets import make_cars, make_folder, make_inshop, make_sop, make_vid

FUZZ = settings(deadline=None, max_examples=60, database=None, suppress_health_check=[HealthCheck.too_slow])
LINE_NUMBER = re.compile(r"\bline (\d+)\b")
INT64_MAX = 2**63 - 1
STATUSES = ("train", "query", "gallery")

# ---------------------------------------------------------------- edits of a valid text file

NASTY_TOKENS = [
    "-1", "-0", "0", "007", "abc", "1.5", "1e3", "²", "١٢", "+3", "1_000", "0x1f", "--5", "-", "", "\x00",
    "9" * 19, "9223372036854775807", "9223372036854775808", "-9223372036854775808", "1" * 5000,
    "id_", "id_-1", "id_²", "id_" + "9" * 30, "id_00000004", "train", "query", "gallery", "eval", "#", "class_03",
]  # fmt: skip
TOKENS = st.one_of(st.sampled_from(NASTY_TOKENS), st.text(max_size=8), st.from_regex(r"-?[0-9]{1,25}", fullmatch=True))
RAW_LINES = st.one_of(
    st.binary(max_size=40),
    TOKENS.map(lambda token: token.encode("utf-8")),
    st.sampled_from(
        [b"a" * 200_000, b"1 " * 50_000, b"\x00" * 1000, b"\xff\xfe", b"\x0c", b"\x1c\x1d", "\u2028".encode()]
    ),
)
INDEX = st.integers(0, 10**6)  # taken modulo the number of lines or fields
LINE_OPS = st.one_of(
    st.tuples(st.just("delete"), INDEX),
    st.tuples(st.just("duplicate"), INDEX),
    st.tuples(st.just("swap"), INDEX, INDEX, INDEX),
    st.tuples(st.just("replace"), INDEX, INDEX, TOKENS),
    st.tuples(st.just("drop_field"), INDEX, INDEX),
    st.tuples(st.just("add_field"), INDEX, TOKENS),
    st.tuples(st.just("insert"), INDEX, RAW_LINES),
)
EDITS = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=400)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("lines"), st.lists(LINE_OPS, min_size=1, max_size=4), st.sampled_from([b"\n", b"\r\n", b"\r"])),
)


def apply_edit(valid: bytes, edit: tuple) -> bytes:
    """The damaged file: random bytes, a prefix of the valid file, or the valid file with its lines edited."""
    kind = edit[0]
    if kind == "bytes":
        return edit[1]
    if kind == "truncate":
        return valid[: int(edit[1] * len(valid))]
    lines = valid.rstrip(b"\n").split(b"\n")
    for op, *args in edit[1]:
        if not lines:
            lines = [b""]
        i = args[0] % len(lines)
        fields = lines[i].split(b" ")
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            a, b = args[1] % len(fields), args[2] % len(fields)
            fields[a], fields[b] = fields[b], fields[a]
        elif op == "replace":
            fields[args[1] % len(fields)] = args[2].encode("utf-8")
        elif op == "drop_field":
            del fields[args[1] % len(fields)]
        elif op == "add_field":
            fields.append(args[1].encode("utf-8"))
        else:
            lines.insert(i, args[1])
        if op in ("swap", "replace", "drop_field", "add_field"):
            lines[i] = b" ".join(fields)
    return edit[2].join(lines) + edit[2]


# ---------------------------------------------------------------- reference readers


@dataclass(frozen=True)
class Expected:
    """What loading a damaged file must do: report ``bad_line``, report the file, or list ``paths``."""

    bad_line: int | None = None
    file_error: bool = False
    paths: tuple[str, ...] = ()


def decoded_lines(data: bytes) -> list[str] | int:
    """The lines of a file (ended by \\n, \\r\\n or \\r), or the 1-based number of the first non-UTF-8 line."""
    raw = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if raw[-1] == b"":
        raw.pop()
    lines = []
    for number, line in enumerate(raw, start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            return number
    return lines


def is_int64(text: str, negative: bool) -> bool:
    """ASCII digits with one optional minus, a value that fits in int64 and, unless ``negative``, is ≥ 0."""
    if not re.fullmatch(r"-?[0-9]+", text):
        return False
    digits = text.lstrip("-").lstrip("0")
    fits = len(digits) <= 19 and int(digits or "0") <= INT64_MAX
    return fits and (negative or not text.startswith("-") or not digits)


def image_path(*parts: str) -> str:
    """An image path as a parsed split stores it: numpy string arrays drop trailing NUL characters."""
    return os.path.join(*parts).rstrip("\x00")


def expect_sop(data: bytes, root: str) -> Expected:
    lines = decoded_lines(data)
    if isinstance(lines, int):
        return Expected(bad_line=lines)
    paths = []
    for number, line in enumerate(lines[1:], start=2):  # line 1 is the header
        fields = line.split(maxsplit=3)
        if not fields:
            continue
        if len(fields) != 4 or not all(is_int64(field, negative=True) and int(field) >= 1 for field in fields[:3]):
            return Expected(bad_line=number)  # SOP's ids start at 1
        paths.append(image_path(root, fields[3].strip()))
    return Expected(paths=tuple(paths))


def expect_vid(data: bytes, root: str) -> Expected:
    lines = decoded_lines(data)
    if isinstance(lines, int):
        return Expected(bad_line=lines)
    paths = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not is_int64(fields[1], negative=False):
            return Expected(bad_line=number)
        paths.append(image_path(root, "image", fields[0] + ".jpg"))
    return Expected(paths=tuple(paths))


def expect_inshop(data: bytes, root: str) -> Expected:
    lines = decoded_lines(data)
    if isinstance(lines, int):
        return Expected(bad_line=lines)
    if not lines or not is_int64(lines[0].strip(), negative=False):
        return Expected(bad_line=1)
    paths, n_train = [], 0
    for number, line in enumerate(lines[2:], start=3):  # line 2 is the header
        fields = line.split()
        if not fields:
            continue
        item = fields[1] if len(fields) == 3 else ""
        if not re.fullmatch(r"id_[0-9]+", item) or not is_int64(item[3:], negative=False) or fields[2] not in STATUSES:
            return Expected(bad_line=number)
        paths.append(image_path(root, fields[0]))
        n_train += fields[2] == "train"
    return Expected(file_error=n_train == 0, paths=tuple(paths))


def expect_split_file(data: bytes, known: set[str]) -> Expected:
    lines = decoded_lines(data)
    if isinstance(lines, int):
        return Expected(bad_line=lines)
    assignment: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        fields = content.split(maxsplit=1)
        if len(fields) != 2 or fields[0] not in ("train", "eval"):
            return Expected(bad_line=number)
        name = fields[1].strip()
        if name not in known or name in assignment:
            return Expected(bad_line=number)
        assignment[name] = fields[0]
    counts = [list(assignment.values()).count(split) for split in ("train", "eval")]
    return Expected(file_error=min(counts) < 2)


# ---------------------------------------------------------------- outcome checks


def check_dataset(dataset: LoadedDataset) -> None:
    """Labels dense in each label space (query and gallery share one), every image an existing file."""
    for name, split in dataset.splits.items():
        assert split.labels.dtype == np.int64 and len(split.labels) == len(split.images)
        assert all(os.path.isfile(path) for path in split.images), name
        assert all(0 <= label < split.n_classes for label in split.labels.tolist())
        if name not in ("query", "gallery"):
            assert set(split.labels.tolist()) == set(range(split.n_classes)), name
    if "query" in dataset.splits:
        shared = dataset.splits["query"].labels.tolist() + dataset.splits["gallery"].labels.tolist()
        assert set(shared) == set(range(dataset.splits["query"].n_classes))


def check_outcome(load: Callable[[], LoadedDataset], annotation: str, expected: Expected) -> LoadedDataset | None:
    """The load succeeds exactly when the reference says so; otherwise its error says what and where."""
    missing = sorted({path for path in expected.paths if not os.path.isfile(path)})
    try:
        dataset = load()
    except (DatasetError, ConfigError) as error:
        message = str(error)
        found_line = LINE_NUMBER.search(message)
        event("line error" if expected.bad_line else "file error" if expected.file_error else "missing images")
        if expected.bad_line is not None:
            assert annotation in message, message[:300]
            assert found_line is not None and int(found_line.group(1)) == expected.bad_line, message[:300]
        elif expected.file_error:  # not a line error (the layout quoted in the message may mention lines)
            assert annotation in message and f"{annotation}, line" not in message, message[:300]
        else:
            assert missing, f"unexpected error: {message[:300]}"
            assert f"{len(missing)} image(s) listed in the annotations are missing" in message
            assert any(path in message for path in missing)
        return None
    assert expected.bad_line is None and not expected.file_error and not missing, expected
    event("loaded")
    check_dataset(dataset)
    return dataset


@contextlib.contextmanager
def damaged(path: Path, data: bytes):
    """``path`` holds ``data`` inside the block and its original content afterwards."""
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)


# ---------------------------------------------------------------- text annotation files

# Regressions found by this fuzzing: int() on "²", "--5" or 5000 digits, int64 overflow, and line numbers shifted
# by str.splitlines() at a form feed.
REGRESSIONS = [
    ("lines", [("replace", 1, 1, "²")], b"\n"),
    ("lines", [("replace", 1, 1, "--5")], b"\n"),
    ("lines", [("replace", 2, 1, "1" * 5000)], b"\n"),
    ("lines", [("replace", 1, 1, "99999999999999999999999")], b"\n"),
    ("lines", [("insert", 1, b"\x0c"), ("replace", 3, 0, "x")], b"\n"),
    ("bytes", b"header\n1 1 1 a.JPG\n\xff\n"),
]


@pytest.fixture(scope="module")
def sop_dir(tmp_path_factory) -> Path:
    return make_sop(tmp_path_factory.mktemp("sop"), per_class=2, size=(8, 8))


@FUZZ
@given(file_name=st.sampled_from(["Ebay_train.txt", "Ebay_test.txt"]), edit=EDITS)
@example(file_name="Ebay_train.txt", edit=REGRESSIONS[0])
@example(file_name="Ebay_test.txt", edit=REGRESSIONS[1])
@example(file_name="Ebay_train.txt", edit=REGRESSIONS[2])
@example(file_name="Ebay_train.txt", edit=REGRESSIONS[3])
@example(file_name="Ebay_train.txt", edit=REGRESSIONS[4])
@example(file_name="Ebay_test.txt", edit=REGRESSIONS[5])
def test_sop_lists_fail_only_with_file_and_line(sop_dir, file_name, edit):
    root = sop_dir / "sop"
    path = root / file_name
    data = apply_edit(path.read_bytes(), edit)
    with damaged(path, data):
        dataset = check_outcome(lambda: load_dataset("sop", sop_dir), str(path), expect_sop(data, str(root)))
    if dataset is not None:
        split = "train" if file_name == "Ebay_train.txt" else "eval"
        assert len(dataset.splits[split]) == len(expect_sop(data, str(root)).paths)


@pytest.fixture(scope="module")
def inshop_dir(tmp_path_factory) -> Path:
    return make_inshop(tmp_path_factory.mktemp("inshop"), train_per_id=2, query_per_id=1, gallery_per_id=1, size=(8, 8))


@FUZZ
@given(edit=EDITS)
@example(edit=("lines", [("replace", 0, 0, "²")], b"\n"))
@example(edit=("lines", [("replace", 0, 0, "1" * 5000)], b"\n"))
@example(edit=("lines", [("replace", 2, 1, "id_" + "9" * 30)], b"\n"))
@example(edit=("lines", [("replace", 2, 1, "id_١")], b"\n"))
@example(edit=("bytes", b"1\nheader\nimg/a.jpg id_1 train\x0c\n\xc3\n"))
def test_inshop_partition_fails_only_with_file_and_line(inshop_dir, edit):
    root = inshop_dir / "in-shop"
    path = root / "Eval" / "list_eval_partition.txt"
    data = apply_edit(path.read_bytes(), edit)
    with damaged(path, data):
        dataset = check_outcome(lambda: load_dataset("inshop", inshop_dir), str(path), expect_inshop(data, str(root)))
    if dataset is not None:
        assert sum(len(dataset.splits[s]) for s in STATUSES) == len(expect_inshop(data, str(root)).paths)


@pytest.fixture(scope="module")
def vid_dir(tmp_path_factory) -> Path:
    return make_vid(tmp_path_factory.mktemp("vid"), per_id=2, size=(8, 8))


VID_LISTS = {"train_list.txt": "train", "test_list_800.txt": "small", "test_list_2400.txt": "large"}


@FUZZ
@given(file_name=st.sampled_from(sorted(VID_LISTS)), edit=EDITS)
@example(file_name="train_list.txt", edit=REGRESSIONS[0])
@example(file_name="test_list_800.txt", edit=("lines", [("replace", 0, 1, "-0")], b"\n"))
@example(file_name="train_list.txt", edit=REGRESSIONS[3])
def test_vid_lists_fail_only_with_file_and_line(vid_dir, file_name, edit):
    root = vid_dir / "vehicle-id" / "VehicleID_V1.0"
    path = root / "train_test_split" / file_name
    data = apply_edit(path.read_bytes(), edit)
    with damaged(path, data):
        dataset = check_outcome(lambda: load_dataset("vid", vid_dir), str(path), expect_vid(data, str(root)))
    if dataset is not None:
        assert len(dataset.splits[VID_LISTS[file_name]]) == len(expect_vid(data, str(root)).paths)


SPLIT_FILE = b"# my split\ntrain class_00\ntrain class_01  # two\n\neval class_02\neval class_03\ntrain class_04\n"


@pytest.fixture(scope="module")
def folder_dir(tmp_path_factory) -> Path:
    root = make_folder(tmp_path_factory.mktemp("folder") / "data", n_classes=6, per_class=2, size=(8, 8))
    (root.parent / "split.txt").write_bytes(SPLIT_FILE)
    return root


@FUZZ
@given(edit=EDITS)
@example(edit=("lines", [("duplicate", 1)], b"\n"))
@example(edit=("lines", [("replace", 4, 1, "class_99")], b"\r"))
@example(edit=("bytes", b"train class_00\x85\ntrain class_01\neval class_02\neval class_03\n\x80"))
def test_folder_split_file_fails_only_with_file_and_line(folder_dir, edit):
    path = folder_dir.parent / "split.txt"
    data = apply_edit(SPLIT_FILE, edit)
    known = {f"class_{k:02d}" for k in range(6)}
    with damaged(path, data):
        dataset = check_outcome(
            lambda: load_dataset("folder", folder_dir, split_file=str(path)), str(path), expect_split_file(data, known)
        )
    if dataset is not None:
        assert set(dataset.splits["train"].class_names).isdisjoint(dataset.splits["eval"].class_names)


# ---------------------------------------------------------------- cars_annos.mat

# (value, valid as a class, valid as a relative_im_path): a class is one whole real number, a path one string.
ODD_VALUES = [
    (np.nan, False, False), (np.inf, False, False), (-np.inf, False, False), (1e300, False, False),
    (2.5, False, False), (1 + 2j, False, False), (np.array([]), False, False), (np.zeros((2, 2)), False, False),
    ("", False, False), (3.0, True, False), (-5, False, False), (0, False, False), (7, True, False),
    (197, False, False),
    (True, True, False), (np.array([np.array([[1]])], dtype=object), True, False),
    ("abc", False, True), ("car_ims/999999.jpg", False, True), ("../outside.jpg", False, True),
]  # fmt: skip
FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
REQUIRED = {"relative_im_path", "class"}
MAT_EDITS = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=600)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(
        st.just("struct"),
        st.sampled_from(["annotations", "annotations", "Annotations", "annots"]),
        st.sets(st.sampled_from(FIELDS), max_size=3),  # fields to drop
        st.lists(st.tuples(INDEX, st.sampled_from(sorted(REQUIRED)), st.integers(0, len(ODD_VALUES) - 1)), max_size=3),
    ),
    st.tuples(st.just("not_struct"), st.sampled_from([np.arange(6.0), "annotations", np.zeros((0, 0))])),
)


@pytest.fixture(scope="module")
def cars_dir(tmp_path_factory) -> Path:
    return make_cars(tmp_path_factory.mktemp("cars"), n_classes=4, per_class=2, size=(8, 8))


def final_changes(n_records: int, changes: list) -> dict[tuple[int, str], int]:
    """(record, field) -> index into ODD_VALUES of the value it ends up with (later changes win)."""
    return {(index % n_records, field): value for index, field, value in changes}


def damaged_mat(valid: bytes, edit: tuple, target: Path) -> None:
    """Write the damaged ``cars_annos.mat``: bytes, a prefix, edited records or a non-struct ``annotations``."""
    kind = edit[0]
    if kind in ("bytes", "truncate"):
        target.write_bytes(edit[1] if kind == "bytes" else valid[: int(edit[1] * len(valid))])
        return
    if kind == "not_struct":
        scipy.io.savemat(target, {"annotations": edit[1]})
        return
    _, variable, dropped, changes = edit
    original = scipy.io.loadmat(io.BytesIO(valid))["annotations"]
    kept = [name for name in FIELDS if name not in dropped]
    records = np.zeros(original.shape, dtype=[(name, object) for name in kept])
    for name in kept:
        records[name] = original[name]
    for (index, name), value in final_changes(records.shape[1], changes).items():
        if name in kept:
            records[name][0, index] = ODD_VALUES[value][0]
    scipy.io.savemat(target, {variable: records})


def expect_cars(valid: bytes, edit: tuple, root: str) -> Expected | None:
    """The outcome of a damaged file; None for a truncated one, which may or may not still load."""
    if edit[0] == "truncate":
        return None
    if edit[0] != "struct":
        return Expected(file_error=True)
    _, variable, dropped, changes = edit
    if variable != "annotations" or REQUIRED & dropped:
        return Expected(file_error=True)
    paths = list(scipy.io.loadmat(io.BytesIO(valid), squeeze_me=True)["annotations"]["relative_im_path"])
    for (index, name), value in final_changes(len(paths), changes).items():
        _, valid_class, valid_path = ODD_VALUES[value]
        if not (valid_path if name == "relative_im_path" else valid_class):
            return Expected(file_error=True)
        if name == "relative_im_path":
            paths[index] = ODD_VALUES[value][0]
    return Expected(paths=tuple(os.path.join(root, path) for path in paths))


@FUZZ
@given(edit=MAT_EDITS)
@example(edit=("struct", "annotations", set(), [(0, "class", 1)]))  # inf: OverflowError before the fix
@example(edit=("struct", "annotations", set(), [(3, "class", 3)]))  # 1e300: overflow in numpy
@example(edit=("struct", "annotations", set(), [(2, "class", 5)]))  # complex: was truncated to its real part
@example(edit=("struct", "annotations", set(), [(1, "relative_im_path", 12)]))  # a number: was a missing image
@example(edit=("struct", "annotations", {"class"}, []))
@example(edit=("struct", "annots", set(), []))
def test_cars_mat_fails_only_naming_the_file(cars_dir, edit):
    root = cars_dir / "cars196"
    path = root / "cars_annos.mat"
    valid = path.read_bytes()
    expected = expect_cars(valid, edit, str(root))
    try:
        damaged_mat(valid, edit, path)
        if expected is not None:
            check_outcome(lambda: load_dataset("cars", cars_dir), str(path), expected)
            return
        try:
            check_dataset(load_dataset("cars", cars_dir))
        except DatasetError as error:
            assert str(path) in str(error) or "listed in the annotations are missing" in str(error), str(error)[:300]
    finally:
        path.write_bytes(valid)


# ---------------------------------------------------------------- image trees: cub and folder, and verify

IMAGE_EXTENSIONS = (b".jpg", b".JPG", b".png", b".jpeg")
STEMS = st.lists(st.sampled_from([c for c in range(1, 256) if c not in b"/."]), min_size=1, max_size=24).map(bytes)
HIDDEN = st.sampled_from([b"", b"", b"", b"."])
FILE_NAMES = st.tuples(HIDDEN, STEMS, st.sampled_from([*IMAGE_EXTENSIONS, b".txt", b"", b".gif"])).map(b"".join)
FILES = st.lists(
    st.tuples(FILE_NAMES, st.sampled_from(["ok", "ok", "empty", "junk"])),
    min_size=1,
    max_size=4,
    unique_by=lambda f: f[0],
)
TREES = st.lists(
    st.tuples(st.tuples(HIDDEN, STEMS).map(b"".join), FILES), min_size=2, max_size=6, unique_by=lambda c: c[0]
)
ENCODED = {ext: cv2.imencode(ext, np.full((6, 6, 3), 90, np.uint8))[1].tobytes() for ext in (".png", ".jpg")}


def run_verify(argv: list[str]) -> tuple[int, str]:
    """Exit status and stdout of ``python -m dataset.verify``, printed to a strict UTF-8 stream like a terminal's."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    with contextlib.redirect_stdout(stdout):
        code = verify.main(argv)
    return code, stdout.buffer.getvalue().decode("utf-8")


@FUZZ
@given(name=st.sampled_from(["cub", "folder"]), tree=TREES, junk=st.binary(max_size=64))
@example(
    name="cub",
    tree=[(b"a", [(b"bird\xff.jpg", "junk")]), (b"b", [(b"ok.jpg", "ok")]), (b"c", [(b"\xe9.JPG", "empty")])],
    junk=b"",
)
@example(name="folder", tree=[(b"%d\xff" % k, [(b"a\xff.jpg", "ok"), (b"b.png", "ok")]) for k in range(4)], junk=b"x")
@example(name="folder", tree=[(b"\xfe", [])] + [(b"%d" % k, [(b"b.png", "ok")]) for k in range(4)], junk=b"x")
def test_image_trees_parse_and_verify_report_corrupt_images(name, tree, junk):
    """Random (also non-UTF-8) file names and corrupt images; random class folder names too for folder (cub keeps
    ASCII ones: its empty-folder warning quotes the name unescaped, which a UTF-8 stdout cannot print)."""
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = os.fsencode(tmp) + b"/data"
        classes_root = dataset_dir + (b"/cub-200-2011/images" if name == "cub" else b"")
        kept: dict[str, list[tuple[bytes, str]]] = {}  # class folder with images -> (path, kind) of its images
        for k, (class_name, files) in enumerate(tree):
            class_name = b"%03d.class_%d" % (k, k) if name == "cub" else class_name
            folder = classes_root + b"/" + class_name
            os.makedirs(folder)
            images = []
            for file_name, kind in files:
                extension = os.path.splitext(file_name)[1]
                image = ENCODED[".png" if extension.lower() == b".png" else ".jpg"]
                content = {"ok": image, "empty": b"", "junk": b"\x00JUNK" + junk}[kind]
                with open(folder + b"/" + file_name, "wb") as handle:
                    handle.write(content)
                if not file_name.startswith(b".") and extension in IMAGE_EXTENSIONS:
                    images.append((folder + b"/" + file_name, kind))
            if (images or name == "cub") and not class_name.startswith(b"."):  # cub splits empty folders too
                kept[os.fsdecode(class_name)] = images
        kept = [kept[class_name] for class_name in sorted(kept)]  # classes sorted by name, as Python sees it
        n_train = len(kept) // 2
        parts = {"train": kept[:n_train], "eval": kept[n_train:]}
        parts = {split: [images for images in part if images] for split, part in parts.items()}
        kept = [images for images in kept if images]
        parses = len(kept) >= 1 if name == "cub" else min(map(len, parts.values())) >= 2

        dir_arg = os.fsdecode(dataset_dir)
        try:
            dataset = load_dataset(name, dir_arg)
        except DatasetError as error:
            assert not parses, str(error)
        else:
            assert parses
            check_dataset(dataset)
            found = {os.fsencode(path) for split in dataset.splits.values() for path in split.images}
            assert found == {path for images in kept for path, _ in images}

        code, text = run_verify(["--dataset", name, "--dataset-dir", dir_arg])
        assert code in (0, 2) and ("OK: no errors" in text) == (code == 0)
        code, text = run_verify(["--dataset", name, "--dataset-dir", dir_arg, "--json"])
        report = json.loads(text)
        if not parses:
            assert code == 2 and report["errors"]
            event("layout error")
            return
        assert report["splits"] == {
            split: {"images": sum(map(len, part)), "classes": len(part)} for split, part in parts.items()
        }
        corrupt = [path for images in kept for path, kind in images if kind != "ok"]
        too_few = [split for split, part in parts.items() if len(part) < 2]
        assert len(report["errors"]) == len(too_few) + bool(corrupt)
        assert code == (2 if report["errors"] else 0)
        event("corrupt images" if corrupt else "verified")
        if corrupt:
            message = report["errors"][-1]
            assert f"{len(corrupt)} image(s) are empty or cannot be decoded" in message
            shown = [path.decode("utf-8", "backslashreplace") for path in corrupt]  # \xNN for non-UTF-8 bytes
            assert sum(path in message for path in shown) == min(5, len(corrupt)), message
