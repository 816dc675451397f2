"""browse_results.py over run folders written by hand in the formats of METHOD.md §9.2."""

import contextlib
import csv
import datetime as dt
import io
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from browse_results import build_figure, main
from lib.run_reader import RECALL_KS, find_run_dirs, select_best, summarise_run

NOW = dt.datetime.now(dt.timezone.utc)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ROOT = Path(__file__).resolve().parent.parent


def iso(hours_ago: float = 0.0) -> str:
    return (NOW - dt.timedelta(hours=hours_ago)).isoformat(timespec="seconds")


def record(epoch: int, r1: float, **metrics) -> dict:
    """An epochs.jsonl line; R@2.. default to r1 + 0.1 so each column's value is distinguishable."""
    line = {"epoch": epoch, "K": 2, "best_epoch": None, "best_value": None, "R@1": r1}
    line.update({"R@2": r1 + 0.1, "R@4": r1 + 0.2, "R@8": r1 + 0.3, "NMI": 0.5, "MAP@R": 0.25, "mARP": 0.375})
    line.update(metrics)
    return line


def recluster_arrays(k: int, n: int = 6, d: int = 4) -> dict[str, np.ndarray]:
    assignment = np.arange(n, dtype=np.int32) % k
    return {
        "assignment": assignment,
        "labels": np.arange(n, dtype=np.int64) // 2,
        "sizes": np.bincount(assignment, minlength=k).astype(np.int64),
        "n_classes": np.ones(k, dtype=np.int64),
        "n_removed": np.zeros(k, dtype=np.int64),
        "permutation": np.arange(max(k - 1, 1), dtype=np.int64),
        "cost_before": np.float64(2.0),
        "cost_after": np.float64(1.0),
        "nmi_prev": np.float64(np.nan),
        "split": np.zeros(max(k - 1, 1), dtype=bool),
        "merges": np.zeros((0, 2), dtype=np.int64),
        "masks": np.linspace(-1, 1, k * d).reshape(k, d).astype(np.float16),
    }


RECLUSTER_K = {-1: 1, 0: 2}


def write_run(
    root: Path, name: str, *, dataset: str = "cub", records: list[dict] | None = None, status: dict | None = None
) -> Path:
    run = root / name
    (run / "recluster").mkdir(parents=True)
    config = {"dataset": dataset, "nb_clusters": 2, "nb_epochs": 3, "derived": {"run_name": name, "k_final": 2}}
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if records is None:
        records = [record(-1, 0.2), record(0, 0.4), record(1, 0.5)]
    (run / "epochs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in records))
    if status is None:
        status = {"state": "finished", "message": None, "started": iso(1), "ended": iso(), "updated": iso()}
        status.update(last_epoch=1, nb_epochs=3)
    (run / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    for epoch, k in RECLUSTER_K.items():
        np.savez_compressed(run / "recluster" / f"e{epoch:04d}.npz", **recluster_arrays(k))
    return run


def run_main(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def csv_rows(root: Path, tmp: Path, *extra: str) -> list[dict]:
    target = tmp / "table.csv"
    code, _, err = run_main([str(root), "--csv", str(target), *extra])
    assert code == 0, err
    with open(target, newline="") as handle:
        return list(csv.DictReader(handle))


def header_of(printed: str) -> list[str]:
    return printed.splitlines()[0].split()


def test_columns_follow_each_dataset(tmp_path):
    write_run(tmp_path / "cub", "c", dataset="cub")
    sop = [record(-1, 0.1, **{"R@10": 0.2, "R@100": 0.3}), record(0, 0.4, **{"R@10": 0.6, "R@100": 0.8})]
    write_run(tmp_path / "sop", "s", dataset="sop", records=sop)
    inshop_ks = {"R@10": 0.6, "R@20": 0.7, "R@30": 0.8, "R@50": 0.9}
    write_run(tmp_path / "inshop", "i", dataset="inshop", records=[record(0, 0.5, **inshop_ks)])
    expected = {
        "cub": ["R@1", "R@2", "R@4", "R@8"],
        "sop": ["R@1", "R@10", "R@100"],
        "inshop": ["R@1", "R@10", "R@20", "R@30", "R@50"],
    }
    for dataset, ks in expected.items():
        code, printed, _ = run_main([str(tmp_path / dataset)])
        assert code == 0
        assert [column for column in header_of(printed) if column.startswith("R@")] == ks
    code, printed, _ = run_main([str(tmp_path / "cub")])
    assert "50.00" in printed and "80.00" in printed  # best epoch 1: R@1 0.5 and R@8 0.8, in percent


def test_mixed_datasets_show_the_union_with_blanks(tmp_path):
    write_run(tmp_path, "c", dataset="cub")
    write_run(tmp_path, "s", dataset="sop", records=[record(0, 0.4, **{"R@10": 0.6, "R@100": 0.8})])
    rows = {row["name"]: row for row in csv_rows(tmp_path, tmp_path)}
    assert [key for key in rows["c"] if key.startswith("R@")] == ["R@1", "R@2", "R@4", "R@8", "R@10", "R@100"]
    assert rows["c"]["R@10"] == "" and rows["c"]["R@8"] == "0.8"
    assert rows["s"]["R@2"] == "" and rows["s"]["R@100"] == "0.8"  # sop has no R@2, even if a record held one


def test_best_epoch_ignores_untrained_epoch_and_first_maximum_wins(tmp_path):
    records = [record(-1, 0.9), record(0, 0.4), record(1, 0.6, NMI=0.11), record(2, 0.6), record(3, 0.5)]
    write_run(tmp_path, "run", records=records)
    (row,) = csv_rows(tmp_path, tmp_path)
    assert (row["best"], row["epochs"], row["sel"]) == ("1", "4", "test")
    assert (row["R@1"], row["NMI"]) == ("0.6", "0.11")


def test_best_epoch_uses_val_recall_when_recorded(tmp_path):
    records = [
        record(-1, 0.1, **{"val/R@1": 0.99}),
        record(0, 0.7, **{"val/R@1": 0.5}),
        record(1, 0.4, **{"val/R@1": 0.6}),
        record(2, 0.8, **{"val/R@1": 0.6}),
    ]
    write_run(tmp_path, "run", records=records)
    (row,) = csv_rows(tmp_path, tmp_path)
    assert (row["best"], row["sel"], row["R@1"]) == ("1", "val", "0.4")


def test_select_best_without_trained_epochs_is_none():
    assert select_best([record(-1, 0.9)]) == (None, "R@1")
    assert select_best([record(-1, 0.9), record(0, 0.1, **{"R@1": None})])[0] is None


def test_status_comes_from_status_json(tmp_path):
    base = {"started": iso(9), "ended": None, "last_epoch": 1, "nb_epochs": 3}
    statuses = {
        "finished": {"state": "finished", "message": None, "updated": iso()},
        "failed": {"state": "failed", "message": "CUDA out of memory.\nTried to allocate", "updated": iso(3)},
        "interrupted": {"state": "interrupted", "message": "received SIGTERM", "updated": iso(30)},
        "fresh": {"state": "running", "message": None, "updated": iso(0.1)},
        "stale": {"state": "running", "message": None, "updated": iso(5)},
        "weird": {"state": "paused", "message": None, "updated": iso()},
    }
    for name, status in statuses.items():
        write_run(tmp_path, name, status={**base, **status})
    write_run(tmp_path, "nostatus")
    (tmp_path / "nostatus" / "status.json").unlink()
    code, printed, _ = run_main([str(tmp_path)])
    assert code == 0 and len(printed.splitlines()) == 2 + 7 + 1  # a multi-line message stays on its row
    rows = {row["name"]: row for row in csv_rows(tmp_path, tmp_path)}
    assert rows["finished"]["status"] == "finished" and rows["finished"]["note"] == ""
    assert rows["failed"]["status"] == "failed" and "CUDA out of memory. Tried to allocate" in rows["failed"]["note"]
    assert rows["interrupted"]["status"] == "interrupted" and "SIGTERM" in rows["interrupted"]["note"]
    assert rows["fresh"]["status"] == "running"
    assert rows["stale"]["status"] == "running (stale 5.0h)"
    assert rows["weird"]["status"] == "unknown" and "paused" in rows["weird"]["note"]
    assert rows["nostatus"]["status"] == "unknown" and "status.json missing" in rows["nostatus"]["note"]


def test_corrupt_and_partial_runs_are_listed_with_a_note(tmp_path):
    bad_line = write_run(tmp_path, "bad-line")
    lines = bad_line.joinpath("epochs.jsonl").read_text().splitlines()
    bad_line.joinpath("epochs.jsonl").write_text("\n".join([lines[0], lines[1][:-5], lines[2]]) + "\n")
    write_run(tmp_path, "no-config").joinpath("config.json").unlink()
    truncated = write_run(tmp_path, "truncated-npz") / "recluster" / "e0000.npz"
    truncated.write_bytes(truncated.read_bytes()[:-30])
    write_run(tmp_path, "untrained", records=[record(-1, 0.3)])
    code, printed, _ = run_main([str(tmp_path)])
    assert code == 0 and len(printed.splitlines()) == 2 + 4 + 1  # header, rule, 4 runs, legend
    rows = {row["name"]: row for row in csv_rows(tmp_path, tmp_path)}
    assert "line 2" in rows["bad-line"]["note"] and rows["bad-line"]["best"] == "1"
    assert "config.json missing" in rows["no-config"]["note"] and rows["no-config"]["dataset"] == "?"
    assert rows["no-config"]["R@8"] == "0.8"  # without a dataset the R@k columns come from the record keys
    assert "e0000.npz" in rows["truncated-npz"]["note"]
    assert rows["untrained"]["best"] == "" and "no epoch >= 0" in rows["untrained"]["note"]


def test_bad_metric_values_and_missing_epochs_get_a_note(tmp_path):
    records = [
        record(-1, 0.2),
        record(0, 0.6, **{"R@1": "high"}),
        record(1, 0.5),
        record(4, float("nan")),
        record(5, 0.45),
    ]
    write_run(tmp_path, "damaged", records=records)
    write_run(tmp_path, "clean")
    code, _, _ = run_main([str(tmp_path)])
    rows = {row["name"]: row for row in csv_rows(tmp_path, tmp_path)}
    assert code == 0 and rows["damaged"]["best"] == "1" and rows["damaged"]["epochs"] == "6"
    note = rows["damaged"]["note"]
    assert "lacks epoch(s) 2-3" in note
    assert "epoch 0 R@1='high'" in note and "epoch 4 R@1=nan" in note
    assert rows["clean"]["note"] == ""


@pytest.mark.parametrize(
    "damage",
    [
        {"sizes": np.array([np.nan, 1.0])},
        {"sizes": np.array([-1, 7])},
        {"masks": np.array([["a", "b"], ["c", "d"]])},
        {"masks": np.array([[0.5, np.inf], [1.0, 0.0]])},
    ],
)
def test_recluster_values_that_cannot_be_drawn_get_a_note_and_the_plot_skips_them(tmp_path, damage):
    run = write_run(tmp_path / "log", "run")
    np.savez(run / "recluster" / "e0000.npz", **{**recluster_arrays(2), **damage})
    code, _, _ = run_main([str(tmp_path / "log"), "--plot", str(tmp_path / "plot.png")])
    (row,) = csv_rows(tmp_path / "log", tmp_path)
    assert code == 0 and "e0000.npz" in row["note"]
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_MAGIC)
    titles = [axes.get_title() for axes in build_figure([summarise_run(run, "run", NOW)]).axes]
    assert "masks e-001 (K=1)" in titles and "masks e0000 (K=2)" not in titles


class _Touch:
    """An object whose unpickling would create a file: proof that nothing is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_pickled_npz_is_reported_and_never_unpickled(tmp_path):
    run = write_run(tmp_path / "log", "run")
    marker = tmp_path / "unpickled"
    arrays = recluster_arrays(2)
    arrays["masks"] = np.array([_Touch(marker)], dtype=object)
    np.savez(run / "recluster" / "e0000.npz", **arrays)
    code, _, _ = run_main([str(tmp_path / "log"), "--plot", str(tmp_path / "plot.png")])
    (row,) = csv_rows(tmp_path / "log", tmp_path)
    assert code == 0 and not marker.exists()
    assert "e0000.npz unreadable" in row["note"]


def test_grep_filters_run_names(tmp_path):
    write_run(tmp_path, "cub-a")
    write_run(tmp_path, "sop-b", dataset="sop", records=[record(0, 0.3)])
    assert [row["name"] for row in csv_rows(tmp_path, tmp_path, "-g", "^sop")] == ["sop-b"]
    code, printed, _ = run_main([str(tmp_path), "-g", "nothing"])
    assert code == 0 and "no run folders match" in printed
    code, _, err = run_main([str(tmp_path), "-g", "("])
    assert code == 2 and "regular expression" in err


def test_sort_by_column(tmp_path):
    write_run(tmp_path, "a", records=[record(0, 0.5)])
    write_run(tmp_path, "b", records=[record(0, 0.7)])
    write_run(tmp_path, "c", records=[record(-1, 0.9)])  # no best epoch: blank R@1 sorts last
    write_run(tmp_path, "d", records=[record(0, 0.6)])
    assert [row["name"] for row in csv_rows(tmp_path, tmp_path, "--sort", "r@1")] == ["b", "d", "a", "c"]
    assert [row["name"] for row in csv_rows(tmp_path, tmp_path, "--sort", "name")] == ["a", "b", "c", "d"]
    code, _, err = run_main([str(tmp_path), "--sort", "R@1000"])
    assert code == 2 and "R@1000" in err and "mARP" in err


def test_csv_holds_fractions_and_every_column(tmp_path):
    write_run(tmp_path, "run")
    (row,) = csv_rows(tmp_path, tmp_path)
    assert list(row) == ["name", "dataset", "K", "best", "epochs", "sel", "R@1", "R@2", "R@4", "R@8"] + [
        "NMI",
        "MAP@R",
        "mARP",
        "status",
        "note",
    ]
    assert row == {
        "name": "run",
        "dataset": "cub",
        "K": "2",
        "best": "1",
        "epochs": "2",
        "sel": "test",
        "R@1": "0.5",
        "R@2": "0.6",
        "R@4": "0.7",
        "R@8": "0.8",
        "NMI": "0.5",
        "MAP@R": "0.25",
        "mARP": "0.375",
        "status": "finished",
        "note": "",
    }


def test_table_prints_percent_and_clips_to_column_width(tmp_path):
    write_run(tmp_path, "a-very-long-run-name-sop-2-e512-K32-s4-3fa9c2d1")
    code, printed, _ = run_main([str(tmp_path), "-cw", "10"])
    assert code == 0
    row = printed.splitlines()[2].split()
    assert row[0] == "a-very-lo…" and row[6:13] == ["50.00", "60.00", "70.00", "80.00", "50.00", "25.00", "37.50"]
    assert run_main([str(tmp_path), "-cw", "2"])[0] == 2


def test_log_dir_may_be_a_run_folder(tmp_path):
    run = write_run(tmp_path, "cub-1-e64-K2-s0-abcdef12")
    assert [row["name"] for row in csv_rows(run, tmp_path)] == ["cub-1-e64-K2-s0-abcdef12"]


def test_runs_behind_links_are_listed_once_and_a_link_loop_ends(tmp_path):
    logs = tmp_path / "logs"
    write_run(logs, "cub-a")
    (logs / "cub-b").symlink_to(write_run(tmp_path / "scratch", "cub-b-real"), target_is_directory=True)
    (logs / "cub-0-again").symlink_to(logs / "cub-a", target_is_directory=True)  # sorts before cub-a
    (logs / "loop").symlink_to(logs, target_is_directory=True)
    (logs / "a-group").mkdir()  # a link in a folder walked before the run's own folder
    (logs / "a-group" / "cub-c-link").symlink_to(write_run(logs / "z-group", "cub-c"), target_is_directory=True)
    assert [row["name"] for row in csv_rows(logs, tmp_path)] == ["cub-a", "cub-b", "z-group/cub-c"]
    assert find_run_dirs(logs) == [logs / "cub-a", logs / "cub-b", logs / "z-group" / "cub-c"]  # direct paths


def test_missing_log_dir_is_one_line_and_exit_2(tmp_path):
    code, printed, err = run_main([str(tmp_path / "nope")])
    assert code == 2 and printed == "" and len(err.strip().splitlines()) == 1 and "nope" in err
    assert run_main(["--no-such-flag"])[0] == 2


def snapshot(folder: Path) -> dict:
    """Every entry with its mtime, and every file's bytes: any write or new file changes it."""
    return {
        path: (path.stat().st_mtime_ns, path.read_bytes() if path.is_file() else None)
        for path in sorted(folder.rglob("*"))
    }


def test_never_writes_into_run_folders(tmp_path):
    run = write_run(tmp_path / "log", "run")
    before = snapshot(tmp_path / "log")
    code, _, _ = run_main([str(tmp_path / "log"), "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "p.png")])
    assert code == 0 and snapshot(tmp_path / "log") == before
    code, _, err = run_main([str(tmp_path / "log"), "--csv", str(run / "table.csv")])
    assert code == 2 and "inside run folder" in err and not (run / "table.csv").exists()


def test_plot_of_one_run_adds_masks_and_cluster_sizes(tmp_path):
    run = write_run(tmp_path, "run")
    code, _, _ = run_main([str(tmp_path), "--plot", str(tmp_path / "one.png")])
    assert code == 0 and (tmp_path / "one.png").read_bytes().startswith(PNG_MAGIC)
    figure = build_figure([summarise_run(run, "run", NOW)])
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert titles == ["R@1 per epoch", "cluster sizes per recluster", "masks e-001 (K=1)", "masks e0000 (K=2)"]
    sizes_axes = figure.axes[1]
    assert [list(line.get_ydata()) for line in sizes_axes.lines] == [[6, 3], [3]]  # cluster 0 and cluster 1


def test_outputs_that_cannot_be_written_are_one_message_each(tmp_path):
    write_run(tmp_path / "log", "run")
    (tmp_path / "folder").mkdir()
    unsupported = r"--plot .*p\.xyz: matplotlib cannot write \.xyz files; use one of .*png"
    cases = [
        (["--csv", str(tmp_path / "folder")], "--csv .*folder is a folder; give a file name"),
        (["--plot", str(tmp_path / "p.xyz")], unsupported),
        (["--csv", "/proc/table.csv"], r"--csv /proc/table\.csv: cannot write it \("),  # no files can be made there
        (["--plot", "/proc/plot.png"], r"--plot /proc/plot\.png: cannot write it \("),
    ]
    for args, expected in cases:
        code, out, err = run_main([str(tmp_path / "log"), *args])
        assert code == 2 and "Traceback" not in err and re.search(expected, err), (args, err)
    code, out, _ = run_main([str(tmp_path / "log"), "--plot", str(tmp_path / "named")])  # no suffix: PNG, named so
    assert code == 0 and f"wrote {tmp_path / 'named.png'}" in out
    assert (tmp_path / "named.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_of_several_runs_draws_one_curve_each(tmp_path):
    runs = [write_run(tmp_path, "a"), write_run(tmp_path, "b", records=[record(0, 0.3), record(1, 0.2)])]
    (runs[1] / "recluster" / "e0000.npz").write_bytes(b"garbage")
    code, _, _ = run_main([str(tmp_path), "--plot", str(tmp_path / "many.png")])
    assert code == 0 and (tmp_path / "many.png").read_bytes().startswith(PNG_MAGIC)
    figure = build_figure([summarise_run(run, run.name, NOW) for run in runs])
    (axes,) = figure.axes
    assert [line.get_label() for line in axes.lines] == ["a", "b"]
    assert [list(line.get_xdata()) for line in axes.lines] == [[-1, 0, 1], [0, 1]]


def test_recall_table_is_the_evaluation_modules_and_browsing_imports_neither_torch_nor_faiss():
    from metriclearning import evaluation

    # one table (lib/recall_ks.py) for evaluating and browsing, in a module light enough for browsing
    assert {name: tuple(evaluation.RECALL_KS[name]) for name in RECALL_KS} == RECALL_KS
    probe = "import sys, lib.run_reader; print(sorted({'torch', 'faiss'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- random damage
JSON_OBJECT_FILES = ("config.json", "status.json")
DELETABLE = ("config.json", "status.json", "epochs.jsonl", "recluster/e-001.npz")
NPZ_FILES = ("recluster/e-001.npz", "recluster/e0000.npz")


def _damage(data, run: Path, name: str) -> None:
    """Delete, truncate or overwrite the file ``name`` of ``run``; a damaged JSON file is always invalid."""
    path = run / name
    content = path.read_bytes()
    kinds = ["truncate", "overwrite"] + (["delete"] if name in DELETABLE else [])
    kind = data.draw(st.sampled_from(kinds), label="kind")
    if kind == "delete":
        path.unlink()
        return
    if kind == "truncate":
        if name in JSON_OBJECT_FILES:
            cuts = range(len(content.rstrip()))  # the closing brace is always lost
        elif name == "epochs.jsonl":  # cut inside a line, never at a line boundary
            cuts = [p for p in range(len(content)) if p == 0 or b"\n" not in content[p - 1 : p + 1]]
        else:
            cuts = range(len(content))
        path.write_bytes(content[: data.draw(st.sampled_from(cuts), label="cut")])
        return
    start = data.draw(st.integers(0, len(content) - 1), label="start")
    if path.suffix == ".npz":
        patch = data.draw(st.binary(min_size=1, max_size=4), label="patch")
    else:
        patch = b"\x00" * data.draw(st.integers(1, 4), label="size")  # NUL is invalid anywhere in JSON
    path.write_bytes(content[:start] + patch + content[start + len(patch) :])


def _npz_intact(path: Path, expected: dict[str, np.ndarray]) -> bool:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return all(np.array_equal(npz[key], value, equal_nan=True) for key, value in expected.items())
    except (OSError, EOFError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, zlib.error):
        return False


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_damage_still_lists_the_run_with_a_note(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "log"
        run = write_run(root, "run")
        target = data.draw(st.sampled_from(("config.json", "status.json", "epochs.jsonl") + NPZ_FILES), label="file")
        _damage(data, run, target)
        (row,) = csv_rows(root, Path(tmp))
        assert row["name"] == "run"
        if target.endswith(".npz") and (run / target).exists():
            epoch = int(Path(target).stem[1:])
            if _npz_intact(run / target, recluster_arrays(RECLUSTER_K[epoch])):
                return  # the bytes changed nothing that is read back (e.g. a zip timestamp)
        assert row["note"] != ""
