"""End-to-end CPU runs of train.py on tiny data: run folder contents, schedule, resume, finished runs."""

import datetime
import importlib.machinery
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from experiment.epoch import debug_report
from lib.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent

# A tiny glyphs problem: 12 classes (6 train, 6 eval) x 16 faces x 1 render at 32 px, resnet18 from scratch.
GLYPHS = [
    "--experiment", "margin_loss_resnet50", "--dataset", "glyphs", "--glyphs-classes", "12", "--glyphs-renders", "1",
    "--sz-resize", "32", "--sz-crop", "32", "--arch", "resnet18", "--pretrained", "0", "--sz-embedding", "16",
    "--batch-size", "16", "--num-samples-per-class", "4", "--num-workers", "0", "--base-lr", "1e-3",
    "--sampler", "distanceweighted", "--backend", "faiss", "-i", "t",
]  # fmt: skip


def run_folders(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "log").glob("*/*") if p.is_dir())


def epochs_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]


def run_main(args: list[str], cwd: Path, monkeypatch) -> int:
    monkeypatch.chdir(cwd)
    return train.main(args)


def test_top_down_run_splits_each_epoch_and_records_everything(tmp_path, monkeypatch):
    args = GLYPHS + ["--nb-epochs", "3", "--nb-clusters", "3", "--mod-epoch", "1", "--force-full-embedding-epoch", "2",
                     "--mask-lr-mult", "10", "--masking-lambda", "0.1", "--is-debug", "--verbose"]  # fmt: skip
    assert run_main(args, tmp_path, monkeypatch) == 0
    [run] = run_folders(tmp_path)
    assert run.name.startswith("glyphs-t-e16-K3-s1-")
    for name in ("config.json", "command.json", "env.json", "log.txt", "status.json", "epochs.jsonl"):
        assert (run / name).is_file(), name
    records = epochs_of(run)
    assert [r["epoch"] for r in records] == [-1, 0, 1, 2]
    assert [r["K"] for r in records] == [1, 1, 2, 3]
    assert [r["full_embedding"] for r in records[1:]] == [False, False, True]
    assert records[0]["lr"] is None and records[0]["best_epoch"] is None
    for record in records:
        for key in ("R@1", "R@2", "R@4", "R@8", "NMI", "MAP@R", "mARP", "n_queries", "n_queries_R0"):
            assert key in record, key
        assert 0.0 <= record["R@1"] <= 1.0
    assert set(records[1]["lr"]) == {"backbone", "embedding", "masks"}
    assert set(records[3]["lr"]) == {"backbone", "embedding"}  # the mask group leaves at the conquer switch
    best = max(records[1:], key=lambda r: r["R@1"])
    assert records[-1]["best_epoch"] == next(r["epoch"] for r in records[1:] if r["R@1"] == best["R@1"])
    total = datetime.timedelta(seconds=round(sum((r["train_s"] or 0) + r["eval_s"] for r in records)))
    best_line = f"best R@1 {100 * best['R@1']:.2f} at epoch {records[-1]['best_epoch']}"
    log = (run / "log.txt").read_text()
    assert log.splitlines()[-1].endswith(f"finished: {best_line}; total time {total}")
    lines = log.splitlines()
    debug_at = [i for i, line in enumerate(lines) if " debug epoch " in line]  # --is-debug: each epoch's first batch
    assert [lines[i].split(" debug ")[1].split(":")[0].split(" mask L1")[0] for i in debug_at] == [
        "epoch 0 batch 0 (learner 0,",
        "epoch 1 batch 0 (learner 0,",
        "epoch 2 batch 0 (the full embedding)",
    ]
    assert [lines[i + 1 : i + 4] for i in debug_at][1][1].startswith("  ")  # K = 2 at epoch 1: a 2 x 2 |cos| matrix
    assert "masks created: [" in log  # --verbose: masks at creation and splits, every optimizer group rebuild
    assert "epoch 1: optimizer groups rebuilt: 2 masks at LR" in log
    assert "epoch 2: optimizer groups rebuilt: the mask group and its state removed" in log
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["last_epoch"] == 2
    names = sorted(p.name for p in (run / "recluster").iterdir())
    assert names == ["e-001.npz", "e0000.npz", "e0001.npz", "e0002.npz"]
    with np.load(run / "recluster" / "e0002.npz", allow_pickle=False) as arrays:
        assert arrays["masks"].shape == (3, 16) and arrays["masks"].dtype == np.float16
        assert arrays["split"].tolist().count(True) == 1  # partial last level: 2 -> 3
        assert arrays["assignment"].dtype == np.int32 and arrays["assignment"].max() <= 2
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["clusters"]["k"] == 3
    assert (run / "checkpoints" / "best.pt").is_file()


def test_finished_run_is_not_retrained_and_overwrite_moves_it_aside(tmp_path, monkeypatch, capsys):
    args = GLYPHS + ["--nb-epochs", "1"]
    assert run_main(args, tmp_path, monkeypatch) == 0
    [run] = run_folders(tmp_path)
    before = (run / "epochs.jsonl").read_text()
    with pytest.raises(SystemExit) as stop:
        run_main(args, tmp_path, monkeypatch)
    assert stop.value.code == 0
    assert "already trained for 1 epochs" in capsys.readouterr().out
    assert (run / "epochs.jsonl").read_text() == before
    assert run_main(args + ["--overwrite"], tmp_path, monkeypatch) == 0
    assert len(list(run.parent.glob(run.name + ".moved-*"))) == 1


def test_larger_nb_epochs_extends_a_finished_run(tmp_path, monkeypatch):
    assert run_main(GLYPHS + ["--nb-epochs", "1"], tmp_path, monkeypatch) == 0
    assert run_main(GLYPHS + ["--nb-epochs", "2"], tmp_path, monkeypatch) == 0
    [run] = run_folders(tmp_path)
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0, 1]


def test_existing_folder_without_checkpoint_asks_for_overwrite(tmp_path, monkeypatch, capsys):
    args = GLYPHS + ["--nb-epochs", "1", "--save-model", "0"]
    assert run_main(args, tmp_path, monkeypatch) == 0
    assert run_main(args + ["--nb-epochs", "2"], tmp_path, monkeypatch) == 2
    assert "--overwrite" in capsys.readouterr().err


def _strip_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("train_s", "eval_s")} for r in records]


def _subprocess_run(cwd: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}  # on the CPU, as the test run itself
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for_epoch(run_parent: Path, epoch: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for jsonl in run_parent.glob("log/*/*/epochs.jsonl"):
            if any(json.loads(line)["epoch"] >= epoch for line in jsonl.read_text().splitlines() if line.strip()):
                return
        if process.poll() is not None:
            raise AssertionError(f"training exited early: {process.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for an epoch record")


def _final_state(cwd: Path) -> tuple[list[dict], dict]:
    [run] = run_folders(cwd)
    return _strip_timings(epochs_of(run)), load_checkpoint(run / "checkpoints" / "last.pt")["model"]


RESUME_ARGS = GLYPHS + ["--nb-epochs", "4", "--nb-clusters", "2", "--mod-epoch", "2", "--mod-epoch-freeze", "1",
                        "--force-full-embedding-epoch", "3", "--mask-lr-mult", "10"]  # fmt: skip


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir(), killed.mkdir()
    assert _subprocess_run(reference, RESUME_ARGS).wait(timeout=600) == 0
    process = _subprocess_run(killed, RESUME_ARGS)
    _wait_for_epoch(killed, 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = _subprocess_run(killed, RESUME_ARGS)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    expected_records, expected_model = _final_state(reference)
    records, model = _final_state(killed)
    assert records == expected_records
    assert expected_model.keys() == model.keys()
    for key in model:
        assert torch.equal(model[key], expected_model[key]), key


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(tmp_path):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    reference.mkdir(), stopped.mkdir()
    assert _subprocess_run(reference, RESUME_ARGS).wait(timeout=600) == 0
    process = _subprocess_run(stopped, RESUME_ARGS)
    _wait_for_epoch(stopped, 0, process)
    time.sleep(1.0)  # inside epoch 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    [run] = run_folders(stopped)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and "SIGTERM" in status["message"]
    resumed = _subprocess_run(stopped, RESUME_ARGS)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    expected_records, expected_model = _final_state(reference)
    records, model = _final_state(stopped)
    assert records == expected_records
    for key in model:
        assert torch.equal(model[key], expected_model[key]), key


def _stop_after(monkeypatch, method: str, call: int) -> None:
    """Let ``Trainer.<method>`` request a stop (as SIGTERM would) at the end of its ``call``-th call."""
    real, calls = getattr(train.Trainer, method), []

    def stopping(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        calls.append(args)
        if len(calls) == call:
            self.preemption.signal_name = "SIGTERM"
        return result

    monkeypatch.setattr(train.Trainer, method, stopping)


def test_a_stop_during_a_recluster_takes_effect_before_the_first_step_and_keeps_the_recluster(
    tmp_path, monkeypatch, capsys
):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    reference.mkdir(), stopped.mkdir()
    assert run_main(RESUME_ARGS, reference, monkeypatch) == 0
    with monkeypatch.context() as patch:
        _stop_after(patch, "_recluster", call=3)  # epochs -1, 0, then 2
        assert run_main(RESUME_ARGS, stopped, monkeypatch) == 0
    assert "SIGTERM: stopped at epoch 2, batch 0" in capsys.readouterr().err
    [run] = run_folders(stopped)
    assert _status(run)["state"] == "interrupted" and _status(run)["last_epoch"] == 1
    assert run_main(RESUME_ARGS, stopped, monkeypatch) == 0
    assert "moved aside" not in capsys.readouterr().err  # epoch 2's recluster is the checkpoint's: not redone
    [expected_run] = run_folders(reference)
    assert sorted(p.name for p in (run / "recluster").iterdir()) == ["e-001.npz", "e0000.npz", "e0002.npz"]
    for name in ("e0000.npz", "e0002.npz"):
        with np.load(run / "recluster" / name) as got, np.load(expected_run / "recluster" / name) as expected:
            assert all(np.array_equal(got[key], expected[key], equal_nan=True) for key in expected.files), name
    expected_records, expected_model = _final_state(reference)
    records, model = _final_state(stopped)
    assert records == expected_records
    assert all(torch.equal(model[key], expected_model[key]) for key in model)


def test_a_stop_during_the_initial_evaluation_takes_effect_before_epoch_0(tmp_path, monkeypatch, capsys):
    """Epoch 0's recluster (a split here) can take minutes on a real dataset: a signal must not wait for it."""
    args = GLYPHS + ["--nb-epochs", "2", "--nb-clusters", "2", "--mod-epoch", "1"]
    with monkeypatch.context() as patch:
        _stop_after(patch, "_evaluate", call=1)
        assert run_main(args, tmp_path, monkeypatch) == 0
    assert "SIGTERM: stopped at the end of epoch -1" in capsys.readouterr().err
    [run] = run_folders(tmp_path)
    assert _status(run)["state"] == "interrupted" and _status(run)["last_epoch"] == -1
    assert [record["epoch"] for record in epochs_of(run)] == [-1]
    assert sorted(p.name for p in (run / "recluster").iterdir()) == ["e-001.npz"]
    assert run_main(args, tmp_path, monkeypatch) == 0
    assert [record["epoch"] for record in epochs_of(run)] == [-1, 0, 1]
    assert _status(run)["state"] == "finished"


def test_ctrl_c_says_what_was_lost_and_how_to_resume(tmp_path, monkeypatch, capsys):
    calls = []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 2:  # epoch 0's evaluation
            raise KeyboardInterrupt
        return real(self)

    real = train.Trainer._evaluate
    with monkeypatch.context() as patch:
        patch.setattr(train.Trainer, "_evaluate", interrupted)
        assert run_main(GLYPHS + ["--nb-epochs", "2"], tmp_path, monkeypatch) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C): the work since the last checkpoint is lost" in err
    assert "Run the same command again to resume" in err and "kill -TERM" in err
    [run] = run_folders(tmp_path)
    assert _status(run)["state"] == "interrupted" and [r["epoch"] for r in epochs_of(run)] == [-1]
    assert run_main(GLYPHS + ["--nb-epochs", "2"], tmp_path, monkeypatch) == 0  # and it does resume
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0, 1]


def test_a_stop_during_the_last_evaluation_still_finishes_the_run(tmp_path, monkeypatch, capsys):
    args = GLYPHS + ["--nb-epochs", "2"]
    with monkeypatch.context() as patch:
        _stop_after(patch, "_evaluate", call=3)  # epochs -1, 0 and 1, the last
        assert run_main(args, tmp_path, monkeypatch) == 0
    [run] = run_folders(tmp_path)
    assert _status(run)["state"] == "finished" and _status(run)["last_epoch"] == 1
    assert [record["epoch"] for record in epochs_of(run)] == [-1, 0, 1]
    with pytest.raises(SystemExit) as stop:
        run_main(args, tmp_path, monkeypatch)
    assert stop.value.code == 0 and "already trained for 2 epochs" in capsys.readouterr().out


def test_a_run_killed_before_its_final_status_is_marked_finished_when_run_again(tmp_path, monkeypatch, capsys):
    args = GLYPHS + ["--nb-epochs", "1"]
    assert run_main(args, tmp_path, monkeypatch) == 0
    [run] = run_folders(tmp_path)
    (run / "status.json").write_text(json.dumps({**_status(run), "state": "running", "ended": None}))
    with pytest.raises(SystemExit) as stop:
        run_main(args, tmp_path, monkeypatch)
    assert stop.value.code == 0 and "did not say finished; it does now" in capsys.readouterr().out
    assert _status(run)["state"] == "finished"


@pytest.mark.parametrize("flag", ["--resume", "--checkpoint"])
def test_resuming_from_a_path_that_does_not_exist_is_one_error(tmp_path, monkeypatch, capsys, flag):
    missing = tmp_path / "nowhere" / "last.pt"
    assert run_main(GLYPHS + [flag, str(missing)], tmp_path, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err == f"error: {flag} {missing}: no such file or run folder; give a checkpoint file or a run folder.\n"
    assert not (tmp_path / "log").exists()


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


# ---------------------------------------------------------------- every dataset layout, one epoch, K = 2 and 3
SMALL = [
    "--experiment", "margin_loss_resnet50", "--sz-resize", "32", "--sz-crop", "32", "--arch", "resnet18",
    "--pretrained", "0", "--sz-embedding", "8", "--batch-size", "8", "--num-samples-per-class", "2",
    "--num-workers", "0", "--nb-epochs", "1", "--hierarchy-method", "none", "--backend", "faiss", "-i", "e2e",
]  # fmt: skip


def _layouts(root: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    from tests import fixtures_datasets as fx

    size = (34, 36)
    return {
        "cub": (fx.make_cub(root / "cub", n_classes=12, per_class=6, size=size), ("R@1", "R@2", "R@4", "R@8")),
        "cars": (fx.make_cars(root / "cars", n_classes=12, per_class=6, size=size), ("R@1", "R@2", "R@4", "R@8")),
        "sop": (fx.make_sop(root / "sop", 6, 6, per_class=6, size=size), ("R@1", "R@10")),
        "inshop": (
            fx.make_inshop(root / "inshop", 6, 6, train_per_id=6, query_per_id=3, gallery_per_id=3, size=size),
            ("R@1", "R@10"),
        ),
        "vid": (
            fx.make_vid(root / "vid", n_train_ids=6, n_test_ids=(3, 4, 6), per_id=6, size=size),
            ("R@1", "R@5"),
        ),
        "folder": (fx.make_folder(root / "folder", n_classes=12, per_class=6, size=size), ("R@1", "R@2", "R@4", "R@8")),
    }


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return _layouts(tmp_path_factory.mktemp("layouts"))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", ["cub", "cars", "sop", "inshop", "vid", "folder"])
def test_one_epoch_on_every_dataset_layout(name, k, layouts, tmp_path, monkeypatch):
    root, recall_keys = layouts[name]
    args = SMALL + ["--dataset", name, "--dataset-dir", str(root), "--nb-clusters", str(k)]
    assert run_main(args, tmp_path, monkeypatch) == 0
    [run] = run_folders(tmp_path)
    records = epochs_of(run)
    assert [r["epoch"] for r in records] == [-1, 0]
    assert records[1]["K"] == k
    for key in (*recall_keys, "MAP@R", "mARP", "NMI", "n_queries", "n_queries_R0"):
        assert key in records[1], (name, key)
    with np.load(run / "recluster" / "e0000.npz", allow_pickle=False) as arrays:
        assert arrays["sizes"].shape == (k,) and arrays["masks"].shape == (k, 8)
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == name and config["derived"]["k_final"] == k


def test_a_few_epochs_of_the_full_method_beat_the_untrained_model(tmp_path, monkeypatch):
    """Learning, not only running: 3 epochs (K = 1, 2, then the conquer stage) on 50 glyph classes raise
    Recall@1 on 50 unseen classes well above the untrained model's (measured: 0.559 -> 0.696)."""
    args = [
        "--experiment", "margin_loss_resnet50", "--dataset", "glyphs", "--glyphs-classes", "100",
        "--glyphs-renders", "2", "--sz-resize", "32", "--sz-crop", "32", "--arch", "resnet18", "--pretrained", "0",
        "--sz-embedding", "64", "--batch-size", "32", "--num-samples-per-class", "4", "--num-workers", "0",
        "--base-lr", "1e-3", "--sampler", "distanceweighted", "--backend", "faiss", "--nb-epochs", "3",
        "--nb-clusters", "2", "--mod-epoch", "1", "--force-full-embedding-epoch", "2", "--mask-lr-mult", "10",
        "--mod-epoch-freeze", "0", "-i", "learn",
    ]  # fmt: skip
    assert run_main(args, tmp_path, monkeypatch) == 0
    [run] = run_folders(tmp_path)
    records = epochs_of(run)
    assert [r["K"] for r in records] == [1, 1, 2, 2]
    assert records[-1]["full_embedding"] is True
    untrained, final = records[0]["R@1"], records[-1]["R@1"]
    assert final >= untrained + 0.08, (untrained, final)


def test_clusters_all_below_the_batch_size_train_no_batch_and_say_so(tmp_path, monkeypatch):
    """8 clusters over 6 classes are all degenerate and merge into one; removal leaves it below B = 96 (the 96
    training images pass the start-up check): T = 0 rounds (METHOD §3.6), with a warning instead of a batch
    padded with repeats."""
    args = GLYPHS + ["--batch-size", "96", "--hierarchy-method", "none", "--nb-clusters", "8", "--nb-epochs", "1"]
    assert run_main(args, tmp_path, monkeypatch) == 0
    [run] = run_folders(tmp_path)
    assert [r["n_batches"] for r in epochs_of(run)] == [None, 0]
    log = (run / "log.txt").read_text()
    assert "epoch 0: no batch to train: every cluster has fewer than --batch-size 96" in log
    assert "masks created" not in log and "debug epoch" not in log  # no --verbose, no --is-debug
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_debug_report_gives_the_losses_the_learner_mask_l1_and_mask_cosines():
    masks = torch.tensor([[1.0, 0.0, -1.0], [1.0, 1.0, 0.0]])  # ReLU'd: [1, 0, 0] and [1, 1, 0]
    report = debug_report(3, 0, 1, torch.tensor(0.25), torch.tensor(0.125), masks)
    assert report.startswith("debug epoch 3 batch 0 (learner 1, mask L1 2.0000): metric loss 0.2500, mask term 0.1250")
    assert report.splitlines()[1:] == ["  1.000 0.707", "  0.707 1.000"]
    assert "(the full embedding)" in debug_report(3, 0, None, torch.tensor(0.25), torch.tensor(0.0), masks)


class FakeWandb(types.ModuleType):
    """Stands in for the optional wandb package: records init, log and finish calls."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.calls = []

    def init(self, **options):
        self.calls.append(("init", options))
        return self

    def log(self, values, step):
        self.calls.append(("log", step, values))

    def finish(self):
        self.calls.append(("finish",))


def test_wandb_gets_one_run_per_run_folder_and_every_epoch_record(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    assert run_main(GLYPHS + ["--nb-epochs", "1", "--wandb-enabled"], tmp_path, monkeypatch) == 0
    [run] = run_folders(tmp_path)
    [(_, options)] = [call for call in fake.calls if call[0] == "init"]
    assert options["name"] == run.name and options["id"].startswith(run.name) and options["resume"] == "allow"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", options["id"])
    assert options["config"]["wandb_enabled"] is True
    logged = [call for call in fake.calls if call[0] == "log"]
    assert [step for _, step, _ in logged] == [0, 1]  # epochs -1 and 0
    record = epochs_of(run)[1]
    assert logged[1][2]["R@1"] == record["R@1"] and logged[1][2]["lr/backbone"] == record["lr"]["backbone"]
    assert fake.calls[-1] == ("finish",)
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb())  # extending the run continues the same W&B run
    assert run_main(GLYPHS + ["--nb-epochs", "2", "--wandb-enabled"], tmp_path, monkeypatch) == 0
    [(_, resumed)] = [call for call in sys.modules["wandb"].calls if call[0] == "init"]
    assert resumed["id"] == options["id"]
    assert [call[1] for call in sys.modules["wandb"].calls if call[0] == "log"] == [2]


def test_wandb_that_cannot_start_is_one_error(tmp_path, monkeypatch, capsys):
    fake = FakeWandb()

    def offline(**options):
        raise RuntimeError("api_key not configured (no-tty)")

    fake.init = offline
    monkeypatch.setitem(sys.modules, "wandb", fake)
    assert run_main(GLYPHS + ["--nb-epochs", "1", "--wandb-enabled"], tmp_path, monkeypatch) == 2
    message = capsys.readouterr().err
    assert "error: --wandb-enabled: Weights & Biases could not start a run (RuntimeError: api_key" in message
    assert "WANDB_MODE=offline" in message and "Traceback" not in message
    [run] = run_folders(tmp_path)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "Weights & Biases" in status["message"]
