"""Which checkpoint a resume continues from (experiment/run_setup.py) and the order the epoch's checkpoints are
written in (experiment/checkpointing.py), on small hand-made checkpoint files."""

from pathlib import Path

import pytest

from experiment import checkpointing
from experiment.config import parse_config
from experiment.run_setup import RESUME_ENTRIES, load_with_fallback
from lib.checkpoint import save_checkpoint
from lib.errors import CheckpointError
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


def test_last_is_written_after_best_and_the_periodic_checkpoint(tmp_path, monkeypatch):
    """A kill between two writes must not leave ``best`` older than the best epoch that ``last`` records."""
    written = []
    monkeypatch.setattr(checkpointing, "save_checkpoint", lambda path, state: written.append(Path(path).stem))
    run = RunFolder(tmp_path / "run")
    checkpointing.write_epoch_checkpoints(run, {}, epoch=3, save_model=2, improved=True)
    assert written == ["best", "ep0003", "last"]
    written.clear()
    checkpointing.write_epoch_checkpoints(run, {}, epoch=4, save_model=2, improved=False)
    assert written == ["last"]
