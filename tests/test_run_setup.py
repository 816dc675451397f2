"""What a command does with its run folder (experiment/run_setup.py: lock, resume source, where it may go) and the
order the epoch's checkpoints are written in (experiment/checkpointing.py), on small hand-made files."""

import dataclasses
import os
from pathlib import Path

import pytest

from experiment import checkpointing
from experiment.checkpointing import settle_checkpoints
from experiment.config import parse_config
from experiment.run_setup import RESUME_ENTRIES, load_with_fallback, plan_run, run_folder_for
from lib.checkpoint import checkpoint_epoch, save_checkpoint
from lib.errors import CheckpointError, ConfigError
from lib.run_lock import LOCK_FILE, ReadOnlyRunFolder
from lib.runs import RunFolder
from tests.test_train_e2e import GLYPHS


@pytest.fixture
def config():
    return parse_config(GLYPHS, cuda_available=False)


def _write(path: Path, config, epoch: int) -> None:
    state = dict.fromkeys(RESUME_ENTRIES)
    state.update(config_hash=config.hash(), epoch=epoch, clusters={"k": 1}, mid_epoch=None)
    save_checkpoint(path, state)


def _damage(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _run_with(tmp_path: Path, config, epochs: dict[str, int], damaged: tuple[str, ...] = ()) -> RunFolder:
    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    for name, epoch in epochs.items():
        _write(run.checkpoint_path(name), config, epoch)
    for name in damaged:
        _damage(run.checkpoint_path(name))
    return run


def _fallback(run: RunFolder, config, first: str = "last") -> tuple[str, int]:
    messages = []
    path, state = load_with_fallback(run, run.checkpoint_path(first), config, fallback=True, log=messages.append)
    assert any(f"resuming from {path}" in message for message in messages)
    return path.stem, state["epoch"]


@pytest.mark.parametrize(
    "epochs, damaged, expected",
    [
        ({"last": 7, "ep0002": 2, "ep0005": 5, "best": 6}, ("last",), ("best", 6)),  # best newer than every periodic
        ({"last": 7, "ep0002": 2, "ep0005": 5, "best": 3}, ("last",), ("ep0005", 5)),  # a periodic newer than best
        ({"last": 7, "ep0002": 2, "ep0005": 5, "best": 3}, ("last", "ep0005"), ("best", 3)),
        ({"last": 7, "ep0002": 2, "ep0005": 5, "best": 3}, ("last", "best"), ("ep0005", 5)),
        ({"last": 10001, "ep9999": 9999, "ep10000": 10000}, ("last",), ("ep10000", 10000)),  # numeric, not by name
    ],
    ids=["best-newest", "periodic-newest", "periodic-damaged", "best-damaged", "five-digit-epoch"],
)
def test_resume_fallback_takes_the_newest_good_checkpoint(tmp_path, config, epochs, damaged, expected):
    run = _run_with(tmp_path, config, epochs, damaged)
    assert _fallback(run, config) == expected


def test_a_named_damaged_checkpoint_falls_back_to_last_first(tmp_path, config):
    run = _run_with(tmp_path, config, {"last": 7, "ep0005": 5, "best": 6}, damaged=("ep0005",))
    assert _fallback(run, config, first="ep0005") == ("last", 7)


def test_without_fallback_a_damaged_checkpoint_is_one_error_and_nothing_else_is_tried(tmp_path, config):
    run = _run_with(tmp_path, config, {"last": 7, "best": 6}, damaged=("last",))
    with pytest.raises(CheckpointError, match="last.pt"):
        load_with_fallback(run, run.checkpoint_path("last"), config, fallback=False, log=print)


def test_no_good_checkpoint_names_the_folder(tmp_path, config):
    run = _run_with(tmp_path, config, {"last": 7, "best": 6}, damaged=("last", "best"))
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        load_with_fallback(run, run.checkpoint_path("last"), config, fallback=True, log=lambda _: None)


def test_last_is_written_first_then_best_and_the_periodic_checkpoint(tmp_path, monkeypatch):
    """METHOD 9.3's order; what a kill in between leaves unwritten, settle_checkpoints completes from last."""
    written = []
    monkeypatch.setattr(checkpointing, "save_checkpoint", lambda path, state: written.append(Path(path).stem))
    run = RunFolder(tmp_path / "run")
    checkpointing.write_epoch_checkpoints(run, {}, epoch=3, save_model=2, improved=True)
    assert written == ["last", "best", "ep0003"]
    written.clear()
    checkpointing.write_epoch_checkpoints(run, {}, epoch=4, save_model=2, improved=False)
    assert written == ["last"]


# ---------------------------------------------------------------- the run folder's lock and where it may go
def test_a_locked_run_folder_is_refused_naming_its_holder_and_free_again_once_released(tmp_path, config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunFolder(run_folder_for(config))
    run.create(fresh=True)
    assert (run.path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(ConfigError, match=rf"in use by pid {os.getpid()} on .*another -i or --log-dir"):
        plan_run(config)
    run.unlock()
    with pytest.raises(ConfigError, match="no 'last' checkpoint"):  # planned, then released on the error
        plan_run(config)
    plan = plan_run(dataclasses.replace(config, overwrite=True))
    assert plan.replace_existing and run.path.is_dir()  # moved aside only when the run starts
    with pytest.raises(ConfigError, match="in use"):
        plan_run(config)
    moved = plan.run.create(replace_existing=True)
    assert moved.name.startswith(run.path.name + ".moved-") and (moved / LOCK_FILE).exists()
    assert run.path.is_dir() and not (run.path / "status.json").exists()
    with pytest.raises(ConfigError, match="in use"):  # the new folder is locked in turn
        plan_run(config)
    plan.run.unlock()


def test_a_fresh_folder_made_by_another_process_meanwhile_is_refused(tmp_path, config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_run(config)
    assert plan.fresh
    RunFolder(plan.run.path).create()  # the other copy of the command got there first
    with pytest.raises(ConfigError, match="created by another process"):
        plan.run.create(fresh=True)


def test_a_log_folder_that_cannot_be_created_is_refused_before_any_work(tmp_path, config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "log").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot create the run folder .*: log is a file"):
        plan_run(config)


@pytest.mark.parametrize("flag", ["--resume", "--checkpoint"])
def test_resume_from_a_folder_or_file_outside_a_run_is_one_error(tmp_path, flag):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.pt").write_bytes(b"")
    for target, named in [(tmp_path / "data", "not a run folder"), (tmp_path / "data" / "x.pt", "inside a run")]:
        config = parse_config(GLYPHS + [flag, str(target)], cuda_available=False)
        with pytest.raises(ConfigError, match=rf"{flag} .*{named}.*has no config\.json"):
            plan_run(config)


def test_resume_accepts_the_checkpoints_folder_of_a_run(tmp_path, config):
    run = _run_with(tmp_path, config, {"last": 3})
    (run.path / "config.json").write_text("{}")
    with_folder = parse_config(GLYPHS + ["--nb-epochs", "9", "--resume", str(run.checkpoints)], cuda_available=False)
    plan = plan_run(with_folder)
    assert plan.run.path == run.path and plan.resume_source == run.checkpoint_path("last")
    plan.run.unlock()


# ---------------------------------------------------------------- settling the other checkpoints on resume
def _flags_state(config, epoch: int, best_epoch: int | None, record: bool = True) -> dict:
    state = dict.fromkeys(RESUME_ENTRIES)
    state.update(
        config_hash=config.hash(), epoch=epoch, clusters={"k": 1}, mid_epoch=None, flags={"best_epoch": best_epoch}
    )
    state["record"] = {"epoch": epoch} if record else None
    return state


def test_settling_writes_what_a_kill_after_last_skipped_and_moves_the_future_aside(tmp_path, config):
    run = _run_with(tmp_path, config, {"last": 5, "best": 3, "ep0002": 2})
    state = _flags_state(config, 5, best_epoch=5)
    notes = settle_checkpoints(run, state, source=run.checkpoint_path("last"), last_completed=5, save_model=3)
    assert checkpoint_epoch(run.checkpoint_path("best")) == 5 and checkpoint_epoch(run.checkpoint_path("ep0005")) == 5
    assert len(notes) == 2 and checkpoint_epoch(run.checkpoint_path("ep0002")) == 2
    older = _flags_state(config, 2, best_epoch=1)  # --resume ep0002.pt: later checkpoints are the abandoned future
    notes = settle_checkpoints(run, older, source=run.checkpoint_path("ep0002"), last_completed=2, save_model=3)
    remaining = sorted(path.name for path in run.checkpoints.iterdir() if ".moved-" not in path.name)
    assert remaining == ["ep0002.pt"] and len(notes) == 3  # last, best and ep0005 moved aside, none rewritten
    assert settle_checkpoints(run, older, source=run.checkpoint_path("ep0002"), last_completed=2, save_model=3) == []


def test_a_finished_run_in_a_read_only_folder_is_reported_without_its_lock(tmp_path, config, monkeypatch):
    run = _run_with(tmp_path, config, {"last": 3})
    (run.path / "config.json").write_text("{}")

    def refused(folder):
        raise ReadOnlyRunFolder(f"cannot write in the run folder {folder} (Permission denied)")

    monkeypatch.setattr("lib.runs.lock_run_folder", refused)  # as for a folder of another user, even as root
    finished = parse_config(GLYPHS + ["--nb-epochs", "4", "--resume", str(run.path)], cuda_available=False)
    plan = plan_run(finished)
    assert plan.finished_epochs == 4 and plan.read_only
    more = parse_config(GLYPHS + ["--nb-epochs", "9", "--resume", str(run.path)], cuda_available=False)
    with pytest.raises(ReadOnlyRunFolder, match="Permission denied"):
        plan_run(more)


def test_the_lock_is_released_even_when_the_error_is_kept(tmp_path, config, monkeypatch):
    """pytest keeps a raised error, hence its traceback and train.main's frame: only an explicit release frees
    the folder for the next command in the same process (a notebook, a sweep driver, these tests)."""
    import train

    monkeypatch.chdir(tmp_path)
    run = RunFolder(run_folder_for(config))
    run.checkpoints.mkdir(parents=True)
    _write(run.checkpoint_path("last"), config, 0)
    (run.path / "config.json").write_text("{}")

    def broken_build(config):
        raise RuntimeError("a bug while building the data")

    monkeypatch.setattr(train, "build_data", broken_build)
    with pytest.raises(RuntimeError, match="a bug") as kept:
        train.main(GLYPHS)  # planned a resume (lock taken), then failed
    plan = plan_run(config)  # the folder is free although ``kept`` still holds main's frame
    assert plan.resume_source == run.checkpoint_path("last") and kept.value is not None
    plan.run.unlock()
