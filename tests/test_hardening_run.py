"""Hardening of a real (tiny) training run: what a user sees when the loss, the disk or a checkpoint goes wrong.

Most tests extend one shared finished 1-epoch glyphs run (copied into each test's folder) to a second epoch, so
only the epoch under test is trained.
"""

import errno
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train
from dataset.cluster_sampler import PlannedBatch
from dataset.loader import Batch
from experiment import checkpointing
from experiment.epoch import EpochProgress, StepSetup, train_one_epoch
from lib import checkpoint as checkpoint_module
from lib.checkpoint import FORMAT, checkpoint_epoch, load_checkpoint, save_checkpoint
from lib.errors import DatasetError
from lib.run_lock import LOCK_FILE, lock_run_folder
from metriclearning.criteria import build_criterion
from metriclearning.losses import MarginLoss
from metriclearning.masks import LearnerMasks
from metriclearning.model import EmbeddingModel
from tests.devices import on_cuda
from tests.test_train_e2e import GLYPHS, epochs_of, run_folders, run_main

ONE_EPOCH = GLYPHS + ["--nb-epochs", "1"]
TWO_EPOCHS = GLYPHS + ["--nb-epochs", "2"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error_line(capsys) -> str:
    """The one ``error:`` line that main prints instead of a traceback (the log shares stderr)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


@pytest.fixture(scope="module")
def finished_one_epoch(tmp_path_factory) -> Path:
    """A folder holding log/ of a finished 1-epoch run: last.pt and best.pt are both epoch 0."""
    cwd = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as patch:
        assert run_main(ONE_EPOCH, cwd, patch) == 0
    return cwd


@pytest.fixture
def extended(finished_one_epoch, tmp_path) -> Path:
    """A private copy of the finished run, ready to be extended with a larger --nb-epochs."""
    shutil.copytree(finished_one_epoch / "log", tmp_path / "log")
    [run] = run_folders(tmp_path)
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0]
    return run


# ---------------------------------------------------------------- a non-finite loss
def test_non_finite_loss_stops_with_where_and_keeps_the_last_good_checkpoints(extended, tmp_path, monkeypatch, capsys):
    run = extended
    before = {name: _sha256(run / "checkpoints" / name) for name in ("last.pt", "best.pt")}
    original_forward = MarginLoss.forward
    calls = []

    def nan_from_third_batch(self, embeddings, labels, triplets):
        calls.append(len(calls))
        loss = original_forward(self, embeddings, labels, triplets)
        return loss * float("nan") if len(calls) >= 3 else loss

    original_set_lrs = train.set_epoch_lrs
    epoch_lrs = []

    def recording_set_lrs(*args, **kwargs):
        epoch_lrs.append(original_set_lrs(*args, **kwargs))
        return epoch_lrs[-1]

    monkeypatch.setattr(MarginLoss, "forward", nan_from_third_batch)
    monkeypatch.setattr(train, "set_epoch_lrs", recording_set_lrs)
    assert run_main(TWO_EPOCHS, tmp_path, monkeypatch) == 2
    message = _error_line(capsys)
    assert "epoch 1, batch 2 (learner 0)" in message
    [lrs] = epoch_lrs  # only epoch 1 was trained
    assert lrs and all(f"{name} {lr:.3g}" in message for name, lr in lrs.items())
    assert "--base-lr" in message
    assert {name: _sha256(run / "checkpoints" / name) for name in before} == before
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0]
    status = _status(run)
    assert status["state"] == "failed" and "epoch 1, batch 2" in status["message"]


# ---------------------------------------------------------------- a full disk
def _disk_full(real_atomic_write):
    """An atomic_write on a disk that fills up half way: some bytes land in the temporary file, then ENOSPC."""

    def failing(path, write):
        def half_then_full(handle):
            handle.write(b"\0" * 1024)
            raise OSError(errno.ENOSPC, "No space left on device")

        real_atomic_write(path, half_then_full)

    return failing


def test_disk_full_at_a_checkpoint_stops_the_run_and_the_same_command_resumes(extended, tmp_path, monkeypatch, capsys):
    run = extended
    args = GLYPHS + ["--nb-epochs", "3"]
    last_before = _sha256(run / "checkpoints" / "last.pt")
    real_atomic_write = checkpoint_module.atomic_write
    trained_epochs = []
    real_train_one_epoch = train.train_one_epoch

    def recording_train_one_epoch(epoch, **kwargs):
        trained_epochs.append(epoch)
        return real_train_one_epoch(epoch, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", recording_train_one_epoch)
    monkeypatch.setattr(checkpoint_module, "atomic_write", _disk_full(real_atomic_write))
    assert run_main(args, tmp_path, monkeypatch) == 2
    message = _error_line(capsys)
    assert "No space left on device" in message and "epoch 1" in message and str(run.relative_to(tmp_path)) in message
    assert trained_epochs == [1]  # stopped at the failed write: epoch 2 was never started
    assert _sha256(run / "checkpoints" / "last.pt") == last_before
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the half-written temporary file is gone
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0]  # every line parses as JSON
    status = _status(run)
    assert status["state"] == "failed" and "No space left on device" in status["message"]

    monkeypatch.setattr(checkpoint_module, "atomic_write", real_atomic_write)
    assert run_main(args, tmp_path, monkeypatch) == 0
    assert trained_epochs == [1, 1, 2]
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0, 1, 2]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert _status(run)["state"] == "finished"


# ---------------------------------------------------------------- a truncated last checkpoint
def test_truncated_last_checkpoint_needs_resume_fallback_which_resumes_from_best(
    extended, tmp_path, monkeypatch, capsys
):
    run = extended
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    assert run_main(TWO_EPOCHS, tmp_path, monkeypatch) == 2
    message = _error_line(capsys)
    assert str(last.relative_to(tmp_path)) in message and "--resume-fallback" in message
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0]

    assert run_main(TWO_EPOCHS + ["--resume-fallback"], tmp_path, monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"--resume-fallback: resuming from {run.relative_to(tmp_path) / 'checkpoints' / 'best.pt'}" in out
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0, 1]
    assert load_checkpoint(last)["epoch"] == 1
    assert _status(run)["state"] == "finished"


# ---------------------------------------------------------------- a kill between an epoch's checkpoints
def test_a_kill_after_last_of_the_final_epoch_loses_no_record_and_best_is_completed(
    extended, tmp_path, monkeypatch, capsys
):
    run = extended
    real_save = checkpointing.save_checkpoint

    def killed_at_best_of_epoch_1(path, state):
        if Path(path).stem == "best" and state["epoch"] == 1:
            raise KeyboardInterrupt  # the process dies here: last.pt holds epoch 1, best.pt and the record do not
        real_save(path, state)

    with monkeypatch.context() as patch:
        patch.setattr(checkpointing, "save_checkpoint", killed_at_best_of_epoch_1)
        assert run_main(TWO_EPOCHS, tmp_path, monkeypatch) == 130  # so epoch 1 was a new best
    assert checkpoint_epoch(run / "checkpoints" / "last.pt") == 1
    assert checkpoint_epoch(run / "checkpoints" / "best.pt") == 0
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0]
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        run_main(TWO_EPOCHS, tmp_path, monkeypatch)
    assert done.value.code == 0 and "already trained for 2 epochs" in capsys.readouterr().out
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0, 1]  # the record restored from last.pt
    assert checkpoint_epoch(run / "checkpoints" / "best.pt") == 1
    assert epochs_of(run)[-1]["best_epoch"] == 1 and _status(run)["state"] == "finished"


# ---------------------------------------------------------------- a second copy of the command, --overwrite
def test_a_run_folder_in_use_is_one_error_and_its_records_stay_as_they_were(extended, tmp_path, monkeypatch, capsys):
    run = extended
    before = {path.name: _sha256(path) for path in run.iterdir() if path.is_file() and path.name != LOCK_FILE}
    holder = lock_run_folder(run)  # as the first copy of the command would, while it trains
    try:
        assert run_main(TWO_EPOCHS, tmp_path, monkeypatch) == 2
        assert "is in use by pid" in _error_line(capsys)
        assert run_main(TWO_EPOCHS + ["--overwrite"], tmp_path, monkeypatch) == 2
        assert "is in use by pid" in _error_line(capsys)
    finally:
        holder.close()
    after = {path.name: _sha256(path) for path in run.iterdir() if path.is_file() and path.name != LOCK_FILE}
    assert after == before and [p.name for p in run.parent.iterdir()] == [run.name]
    assert run_main(TWO_EPOCHS, tmp_path, monkeypatch) == 0  # released: the same command resumes
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0, 1]


def test_overwrite_moves_the_old_run_aside_only_once_the_new_one_starts(extended, tmp_path, monkeypatch, capsys):
    run = extended

    def failing_build(config):
        raise DatasetError("the dataset is not where --dataset-dir says")

    with monkeypatch.context() as patch:
        patch.setattr(train, "build_data", failing_build)
        assert run_main(TWO_EPOCHS + ["--overwrite"], tmp_path, monkeypatch) == 2
    assert "--dataset-dir" in _error_line(capsys)
    assert [p.name for p in run.parent.iterdir()] == [run.name] and _status(run)["state"] == "finished"
    assert run_main(TWO_EPOCHS + ["--overwrite"], tmp_path, monkeypatch) == 0
    [moved] = [p for p in run.parent.iterdir() if p != run]
    assert moved.name.startswith(run.name + ".moved-") and [r["epoch"] for r in epochs_of(moved)] == [-1, 0]
    assert f"--overwrite: moved the previous run folder to {moved.relative_to(tmp_path)}" in capsys.readouterr().err
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0, 1]


# ---------------------------------------------------------------- hostile checkpoints
def _extra_key(model_state: dict) -> None:
    model_state["embedding.unexpected"] = torch.zeros(3)


def _wrong_shape(model_state: dict) -> None:
    weight = model_state["embedding.weight"]
    model_state["embedding.weight"] = torch.zeros(weight.shape[0] + 1, weight.shape[1])


@pytest.mark.parametrize("damage", [_extra_key, _wrong_shape], ids=["extra-key", "wrong-shape"])
def test_checkpoint_that_does_not_fit_the_model_is_refused_naming_the_file(
    damage, extended, tmp_path, monkeypatch, capsys
):
    run = extended
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    damage(state["model"])
    save_checkpoint(last, state)
    assert run_main(TWO_EPOCHS, tmp_path, monkeypatch) == 2
    message = _error_line(capsys)
    assert str(last.relative_to(tmp_path)) in message
    assert "embedding" in message  # the offending entry is named
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0]
    assert _status(run)["state"] == "failed"


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda state: state.pop("clusters"), "clusters"),
        (lambda state: state["clusters"].update(k="4"), "clusters.k"),
        (lambda state: state.update(epoch=0.5), "integer epoch"),
    ],
    ids=["no-clusters", "text-k", "float-epoch"],
)
def test_checkpoint_missing_resume_entries_is_refused_and_fallback_skips_it(
    damage, named, extended, tmp_path, monkeypatch, capsys
):
    run = extended
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    damage(state)
    save_checkpoint(last, state)
    assert run_main(TWO_EPOCHS, tmp_path, monkeypatch) == 2
    message = _error_line(capsys)
    assert str(last.relative_to(tmp_path)) in message and named in message and "--resume-fallback" in message
    assert run_main(TWO_EPOCHS + ["--resume-fallback"], tmp_path, monkeypatch) == 0
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0, 1]


class _CreatesFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_that_runs_code_is_refused_without_running_it(extended, tmp_path, monkeypatch, capsys):
    run = extended
    last = run / "checkpoints" / "last.pt"
    marker = tmp_path / "pwned"
    torch.save({"format": FORMAT, "model": _CreatesFileWhenUnpickled(marker)}, last)
    assert run_main(TWO_EPOCHS, tmp_path, monkeypatch) == 2
    message = _error_line(capsys)
    assert str(last.relative_to(tmp_path)) in message
    assert not marker.exists()
    torch.load(last, weights_only=False)  # the payload is really hostile: an unsafe load runs it
    assert marker.exists()


# ---------------------------------------------------------------- mixed precision and memory format
MIXED_PRECISION = [
    ("cpu", "bf16"),
    on_cuda("cuda", "bf16", name="cuda-bf16"),
    on_cuda("cuda", "fp16", name="cuda-fp16"),
]


@pytest.mark.parametrize("device, amp", MIXED_PRECISION)
def test_mixed_precision_channels_last_epoch_finishes_with_finite_numbers(device, amp, tmp_path, monkeypatch):
    """One epoch with --amp and --channels-last; fp16 (CUDA only) also runs the gradient scaler."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    original_forward = EmbeddingModel.forward
    seen = []

    def recording_forward(self, images, learner_id=None):
        if self.training:
            autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == dtype
            seen.append((images.device.type, images.is_contiguous(memory_format=torch.channels_last), autocast))
        return original_forward(self, images, learner_id)

    monkeypatch.setattr(EmbeddingModel, "forward", recording_forward)
    assert run_main(ONE_EPOCH + ["--amp", amp, "--channels-last"], tmp_path, monkeypatch) == 0
    assert seen and all(entry == (device, True, True) for entry in seen)
    [run] = run_folders(tmp_path)
    record = epochs_of(run)[-1]
    assert record["epoch"] == 0 and record["n_batches"] - record["n_skipped"] > 0
    assert math.isfinite(record["R@1"]) and math.isfinite(record["loss_metric"]) and record["loss_metric"] > 0
    model = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(value).all() for value in model.values() if value.is_floating_point())


def test_fp16_without_cuda_is_refused_with_a_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_main(ONE_EPOCH + ["--amp", "fp16"], tmp_path, monkeypatch) == 2
    assert "--amp fp16 needs CUDA" in _error_line(capsys)
    assert not (tmp_path / "log").exists()


class _TinyEmbedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(12, 4)

    def forward(self, images, learner_id=None):
        return F.normalize(self.linear(images.flatten(1)), dim=1)


def test_grad_scaler_skips_an_overflowing_step_and_the_epoch_goes_on():
    """The --amp fp16 step path, on the CPU: an inf gradient costs one skipped step and a halved scale."""
    torch.manual_seed(0)
    model = _TinyEmbedder()
    labels = np.repeat(np.arange(4), 4)
    plan = [PlannedBatch(learner_id=0, indices=np.arange(16)) for _ in range(4)]
    images = torch.randn(16, 3, 2, 2)
    loader = [Batch(images, torch.from_numpy(labels), torch.arange(16), 0, index) for index in range(len(plan))]
    steps, snapshots = [0], []
    model.register_forward_pre_hook(lambda module, args: snapshots.append(module.linear.weight.detach().clone()))

    def overflow_on_second_step(grad):
        steps[0] += 1
        return torch.full_like(grad, float("inf")) if steps[0] == 2 else grad

    model.linear.weight.register_hook(overflow_on_second_step)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    setup = StepSetup(
        model=model,
        masks=LearnerMasks(4, 1),
        criterion=build_criterion(
            "MarginLoss",
            margin=0.2,
            sampler="distanceweighted",
            soft_loss=False,
            lr_beta=0.0,
            n_train_classes=4,
            alpha=1.0,
            lr_alpha=0.0,
        ),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        scaler=scaler,
        device=torch.device("cpu"),
        amp_dtype=None,
        channels_last=False,
        masking_lambda=0.0,
        with_l1=False,
        seed=0,
    )
    progress = train_one_epoch(
        0,
        plan=plan,
        loader=loader,
        train_labels=labels,
        setup=setup,
        full_embedding=True,
        progress=EpochProgress(),
        stop_requested=lambda: False,
        lrs={"backbone": 0.5},
        show_progress=False,
    )
    assert progress.n_trained == 4 and progress.next_batch == 4 and math.isfinite(progress.loss_metric_sum)
    assert scaler.get_scale() == 512.0
    assert not torch.equal(snapshots[1], snapshots[0])  # step 1 updated the weights
    assert torch.equal(snapshots[2], snapshots[1])  # step 2 overflowed and was skipped
    assert not torch.equal(snapshots[3], snapshots[2])  # step 3 trained again
    assert torch.isfinite(model.linear.weight).all()
