"""Hostile paths in run folders never make eval_model.py or browse_results.py write outside the run folder (issue 7).

Run records name paths (config.json: dataset_dir, split_file, pretrained_weights, log_dir, checkpoint, resume;
command.json: argv; status.json and epochs.jsonl: free text), and a copied run folder may hold symlinks. Each test
builds such a run folder next to an "outside" folder, runs the command in-process, and compares snapshots of the
whole temporary tree: the only change allowed is the file the command documents (the results JSON next to the
checkpoint, the CSV or plot the user asked for), and a run that cannot be evaluated gets one clear line.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import browse_results
import eval_model
from dataset import glyphs
from experiment.build import build_model
from experiment.config import parse_config
from lib.checkpoint import save_checkpoint
from tests.test_browse_results import recluster_arrays

CONFIG_ARGS = [
    "--experiment", "margin_loss_resnet50", "--dataset", "glyphs", "--glyphs-classes", "8", "--glyphs-renders", "1",
    "--sz-resize", "32", "--sz-crop", "32", "--arch", "resnet18", "--pretrained", "0", "--sz-embedding", "8",
    "--batch-size", "16", "--num-samples-per-class", "4", "--num-workers", "0", "--nb-epochs", "1",
    "--backend", "faiss", "-i", "paths",
]  # fmt: skip
RESULTS = "log/group/run/checkpoints/best.eval.json"  # the one file a successful evaluation writes


@pytest.fixture(scope="module")
def template_run(tmp_path_factory) -> Path:
    """A glyphs run folder as eval_model.py reads it (config.json, checkpoints/best.pt), without training."""
    config = parse_config(CONFIG_ARGS, cuda_available=False)
    run = tmp_path_factory.mktemp("template") / "run"
    torch.manual_seed(0)
    model = build_model(config, n_masks=1, device=torch.device("cpu"))
    state = {"model": model.state_dict(), "clusters": {"k": 1}, "config_hash": config.hash(), "epoch": 0}
    save_checkpoint(run / "checkpoints" / "best.pt", state)
    record = {**config.to_dict(), "derived": {"config_hash": config.hash(), "k_final": 1}}
    (run / "config.json").write_text(json.dumps(record, indent=2))
    return run


@dataclass(frozen=True)
class Layout:
    root: Path  # everything below is snapshotted
    run: Path  # root/log/group/run
    outside: Path  # root/outside: a folder the records point at; "../../outside" from the working directory


@pytest.fixture
def layout(template_run, tmp_path, monkeypatch) -> Layout:
    run = tmp_path / "log" / "group" / "run"
    shutil.copytree(template_run, run)
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "notes.txt").write_text("not a split file\n")
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return Layout(tmp_path, run, outside)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below ``root`` without following symlinks: links by target, files by content and mtime."""
    entries = {}
    for folder, subfolders, files in os.walk(root):
        for name in subfolders + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                entry = ("link", os.readlink(path))
            elif os.path.isdir(path):
                entry = ("dir",)
            else:
                entry = ("file", hashlib.sha256(Path(path).read_bytes()).hexdigest(), os.stat(path).st_mtime_ns)
            entries[os.path.relpath(path, root)] = entry
    return entries


def changed(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def edit_config(run: Path, **changes) -> None:
    path = run / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def evaluate(capsys, *args: str) -> tuple[int, str, str]:
    code = eval_model.main([*args, "--nmi-runs", "1", "--json"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def failure_line(err: str, run: Path) -> str:
    """The one line that says why the run cannot be evaluated."""
    [line] = [line for line in err.splitlines() if "cannot be evaluated" in line]
    assert line.startswith(f"{run.name}: cannot be evaluated: ")
    return line


# ---------------------------------------------------------------------------------------------- eval_model.py
def test_recorded_dataset_dir_is_never_written(layout, capsys, monkeypatch):
    """Glyphs were cached in the recorded dataset_dir: a run folder could make evaluation write where it liked."""
    monkeypatch.setattr(glyphs, "_memory_cache", {})  # a memory hit would skip the cache write altogether
    edit_config(layout.run, dataset_dir=str(layout.outside))
    before = snapshot(layout.root)
    code, out, err = evaluate(capsys, str(layout.run))
    assert code == 0, err
    assert changed(before, snapshot(layout.root)) == {RESULTS}
    assert json.loads(out)["checkpoint"] == str(layout.run / "checkpoints" / "best.pt")


def test_dataset_dir_given_by_the_user_may_hold_the_glyph_cache(layout, capsys, monkeypatch):
    """Control for the test above: the snapshot does see the cache file when the user names the folder."""
    monkeypatch.setattr(glyphs, "_memory_cache", {})
    before = snapshot(layout.root)
    code, _, err = evaluate(capsys, str(layout.run), "--dataset-dir", "../../outside")
    assert code == 0, err
    [cache] = changed(before, snapshot(layout.root)) - {RESULTS}
    assert cache.startswith("outside/glyphs-") and cache.endswith(".npz")


def test_hostile_paths_in_every_record_are_not_used(layout, capsys, monkeypatch):
    """Relative paths too; weights, log, checkpoint and resume paths and the other records' text are not followed."""
    monkeypatch.setattr(glyphs, "_memory_cache", {})
    (layout.outside / "weights.pt").write_bytes(b"not weights: loading this would fail")
    edit_config(
        layout.run,
        dataset_dir="../../outside/data",
        pretrained_weights=str(layout.outside / "weights.pt"),
        log_dir="../../outside",
        checkpoint=str(layout.outside / "ckpt.pt"),
        resume="../../outside/run",
    )
    (layout.run / "command.json").write_text(
        json.dumps({"argv": ["--log-dir", "../../outside", "--save-embeddings", str(layout.outside / "e.npz")]})
    )
    (layout.run / "status.json").write_text(json.dumps({"state": "finished", "message": str(layout.outside)}))
    (layout.run / "epochs.jsonl").write_text(json.dumps({"epoch": 0, "R@1": 0.5, "checkpoint": "../../outside"}))
    before = snapshot(layout.root)
    code, out, err = evaluate(capsys, str(layout.run))
    assert code == 0, err
    assert changed(before, snapshot(layout.root)) == {RESULTS}
    assert json.loads(out)["checkpoint"] == str(layout.run / "checkpoints" / "best.pt")


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_folder_dataset_outside_is_only_read_and_the_failure_is_one_line(layout, capsys, form):
    data, split = (layout.outside, layout.outside / "notes.txt") if form == "absolute" else ("../../outside", None)
    edit_config(layout.run, dataset="folder", dataset_dir=str(data), split_file=None if split is None else str(split))
    before = snapshot(layout.root)
    code, out, err = evaluate(capsys, str(layout.run))
    assert code == 2 and changed(before, snapshot(layout.root)) == set()
    line = failure_line(err, layout.run)
    assert str(layout.outside) in line and "--dataset-dir" in line
    assert json.loads(out)["error"] in line


def test_checkpoints_folder_linked_outside_without_checkpoint(layout, capsys):
    shutil.rmtree(layout.run / "checkpoints")
    (layout.outside / "checkpoints").mkdir()
    (layout.run / "checkpoints").symlink_to(layout.outside / "checkpoints")
    before = snapshot(layout.root)
    code, _, err = evaluate(capsys, str(layout.run))
    assert code == 2 and changed(before, snapshot(layout.root)) == set()
    assert "best.pt does not exist" in failure_line(err, layout.run)


def test_run_files_linked_outside_are_read_and_the_results_link_is_replaced(layout, capsys):
    """config.json and best.pt are links to outside files; a results file left as a link is replaced, not followed."""
    for name in ("config.json", "checkpoints/best.pt"):
        shutil.move(layout.run / name, layout.outside / Path(name).name)
        (layout.run / name).symlink_to(layout.outside / Path(name).name)
    victim = layout.outside / "victim.json"
    victim.write_text("precious\n")
    (layout.root / RESULTS).symlink_to(victim)
    before = snapshot(layout.root)
    code, _, err = evaluate(capsys, str(layout.run))
    assert code == 0, err
    assert changed(before, snapshot(layout.root)) == {RESULTS}
    assert victim.read_text() == "precious\n"
    assert not (layout.root / RESULTS).is_symlink() and "R@1" in json.loads((layout.root / RESULTS).read_text())


# ---------------------------------------------------------------------------------------------- browse_results.py
def browse(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = browse_results.main(list(args))
    return code, out.getvalue(), err.getvalue()


def hostile_browse_run(layout: Layout) -> None:
    """Records full of outside paths, and a recluster folder that is a symlink to an outside folder."""
    edit_config(layout.run, dataset="../../outside", dataset_dir=str(layout.outside), log_dir="../../outside")
    lines = [{"epoch": -1, "R@1": 0.25, "K": 1}, {"epoch": 0, "R@1": 0.5, "K": 1, str(layout.outside): "../../x"}]
    (layout.run / "epochs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (layout.run / "status.json").write_text(json.dumps({"state": "failed", "message": str(layout.outside / "x")}))
    (layout.run / "command.json").write_text(json.dumps({"argv": ["--csv", str(layout.outside / "t.csv")]}))
    (layout.outside / "recluster").mkdir()
    np.savez(layout.outside / "recluster" / "e-001.npz", **recluster_arrays(1))
    (layout.run / "recluster").symlink_to(layout.outside / "recluster")


def test_browse_writes_only_the_requested_outputs(layout):
    hostile_browse_run(layout)
    (layout.root / "out").mkdir()
    before = snapshot(layout.root)
    code, out, err = browse(str(layout.root / "log"), "--csv", "../../out/t.csv", "--plot", "../../out/p.png")
    assert code == 0, err
    assert changed(before, snapshot(layout.root)) == {"out/t.csv", "out/p.png"}
    assert "group/run" in out and "failed" in out


@pytest.mark.parametrize("flag", ["--csv", "--plot"])
def test_browse_refuses_outputs_that_reach_a_run_folder_through_symlinks(layout, flag):
    hostile_browse_run(layout)
    (layout.root / "into-run").symlink_to(layout.run)
    (layout.root / "dangling.png").symlink_to(layout.run / "new.png")
    for target in (layout.root / "into-run" / "t.out", layout.root / "dangling.png"):
        before = snapshot(layout.root)
        code, out, err = browse(str(layout.root / "log"), flag, str(target))
        assert code == 2 and out == "" and changed(before, snapshot(layout.root)) == set()
        assert err.startswith(f"browse_results.py: {flag} {target} is inside run folder") and err.count("\n") == 1
