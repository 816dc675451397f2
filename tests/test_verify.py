"""``python -m dataset.verify``: report contents, JSON shape and exit codes (METHOD.md §7.1)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataset.verify import main
from tests.fixtures_datasets import make_cub, make_folder, make_inshop, make_sop, make_vid

REPO = Path(__file__).resolve().parents[1]


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json", "--workers", "2"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_clean_dataset_reports_counts_and_count_warnings(tmp_path, capsys):
    make_cub(tmp_path, n_classes=4, per_class=3)
    code, report = run_json(capsys, "--dataset", "cub", "--dataset-dir", str(tmp_path))
    assert code == 0
    assert set(report) == {"dataset", "root", "splits", "warnings", "errors"}
    assert report["dataset"] == "cub"
    assert report["root"] == str(tmp_path / "cub-200-2011" / "images")
    assert report["splits"] == {"train": {"images": 6, "classes": 2}, "eval": {"images": 6, "classes": 2}}
    assert "cub train: expected 5864 images, found 6" in report["warnings"]
    assert report["errors"] == []


def test_split_names_of_inshop_and_vid(tmp_path, capsys):
    make_inshop(tmp_path, train_per_id=1, query_per_id=1, gallery_per_id=1)
    make_vid(tmp_path, per_id=1)
    code, report = run_json(capsys, "--dataset", "inshop", "--dataset-dir", str(tmp_path))
    assert code == 0 and list(report["splits"]) == ["train", "query", "gallery"]
    assert report["splits"]["query"] == {"images": 3, "classes": 3}
    code, report = run_json(capsys, "--dataset", "vid", "--dataset-dir", str(tmp_path))
    assert code == 0 and list(report["splits"]) == ["train", "small", "medium", "large"]
    assert report["splits"]["medium"] == {"images": 3, "classes": 3}


def test_missing_and_corrupt_images_are_all_collected(tmp_path, capsys):
    make_sop(tmp_path, n_train_classes=2, n_eval_classes=2, per_class=3)
    base = tmp_path / "sop"
    missing = base / "chair_final" / "100001_1.JPG"
    missing.unlink()
    corrupt = base / "bicycle_final" / "100004_2.JPG"
    corrupt.write_bytes(b"\xff\xd8 this is not a JPEG")
    empty = base / "bicycle_final" / "100002_0.JPG"
    empty.write_bytes(b"")
    code, report = run_json(capsys, "--dataset", "sop", "--dataset-dir", str(tmp_path))
    assert code == 2
    assert report["splits"]["train"] == {"images": 6, "classes": 2}
    assert len(report["errors"]) == 2
    missing_error, unreadable_error = report["errors"]
    assert "1 image(s)" in missing_error and str(missing) in missing_error
    assert "2 image(s)" in unreadable_error and str(corrupt) in unreadable_error and str(empty) in unreadable_error


def test_truncated_jpeg_is_a_warning(tmp_path, capsys):
    make_cub(tmp_path, n_classes=4, per_class=1, size=(40, 40))
    path = tmp_path / "cub-200-2011" / "images" / "002.Bird_1" / "Bird_1_0000_100.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    code, report = run_json(capsys, "--dataset", "cub", "--dataset-dir", str(tmp_path))
    assert code == 0
    assert any("1 JPEG file(s)" in w and str(path) in w for w in report["warnings"])


def test_layout_error_and_too_few_classes(tmp_path, capsys):
    code, report = run_json(capsys, "--dataset", "inshop", "--dataset-dir", str(tmp_path))
    assert code == 2 and report["splits"] == {}
    assert report["root"] == str(tmp_path / "in-shop")
    assert len(report["errors"]) == 1 and "list_eval_partition.txt" in report["errors"][0]
    make_cub(tmp_path, n_classes=3, per_class=2)
    code, report = run_json(capsys, "--dataset", "cub", "--dataset-dir", str(tmp_path))
    assert code == 2
    assert report["errors"] == ["cub train: 1 class(es) with images; at least 2 are needed"]


def test_human_readable_report(tmp_path, capsys):
    make_cub(tmp_path, n_classes=4, per_class=1)
    assert main(["--dataset", "cub", "--dataset-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "expected 5864 images, found 2" in out and out.rstrip().endswith("OK: no errors")
    assert main(["--dataset", "cars", "--dataset-dir", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "cars196 not found" in out and out.rstrip().endswith("FAILED: 1 error(s)")


def test_command_line_with_split_file(tmp_path):
    make_folder(tmp_path / "data", n_classes=5, per_class=2)
    split_file = tmp_path / "split.txt"
    split_file.write_text("train class_00\ntrain class_01\neval class_02\neval class_03\n")
    command = [sys.executable, "-m", "dataset.verify", "--dataset", "folder", "--dataset-dir", str(tmp_path / "data")]
    done = subprocess.run(
        [*command, "--split-file", str(split_file), "--json"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # exactly one JSON object on stdout
    assert report["splits"] == {"train": {"images": 4, "classes": 2}, "eval": {"images": 4, "classes": 2}}
    assert len(report["warnings"]) == 1 and "class_04" in report["warnings"][0]


@pytest.mark.parametrize("argv", [["--dataset", "mnist"], ["--dataset", "cub", "--data", "x"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_unreadable_split_file_is_reported(tmp_path, capsys):
    make_folder(tmp_path, n_classes=4, per_class=1)
    code, report = run_json(
        capsys, "--dataset", "folder", "--dataset-dir", str(tmp_path), "--split-file", os.fspath(tmp_path / "no.txt")
    )
    assert code == 2 and "--split-file" in report["errors"][0]
