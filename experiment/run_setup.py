"""Where a run lives and whether it starts, resumes or is already done (METHOD.md §3.1 step 1, §9.1)."""

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from experiment.config import Config
from lib.checkpoint import load_checkpoint
from lib.errors import CheckpointError, ConfigError
from lib.run_lock import ReadOnlyRunFolder
from lib.runs import RunFolder, read_epoch_records

LOG_ROOT = Path("log")
RESUME_ENTRIES = ("config_hash", "epoch", "model", "optimizer", "criterion", "clusters", "flags", "rng", "record")
FALLBACK_HINT = " Pass --resume-fallback to continue from the newest good checkpoint, or --overwrite to start again."


@dataclass(frozen=True)
class RunPlan:
    """What the command does with its run folder. On rank 0, ``run`` holds the folder's lock if it exists."""

    run: RunFolder
    resume_state: dict | None = None  # the checkpoint to continue from; None = start from scratch
    resume_source: Path | None = None
    finished_epochs: int | None = None  # set when nothing is left to train
    fresh: bool = False  # the folder does not exist yet
    replace_existing: bool = False  # --overwrite: move the existing folder aside when the run starts
    read_only: bool = False  # a finished run in a folder this process cannot write: only reported on


def run_folder_for(config: Config) -> Path:
    return LOG_ROOT / config.log_dir / config.run_name()


def last_completed_epoch(checkpoint: dict) -> int:
    """An epoch-end checkpoint's epoch; a mid-epoch one counts as the epoch before."""
    return int(checkpoint["epoch"]) - (1 if checkpoint.get("mid_epoch") else 0)


def plan_run(config: Config, log=print) -> RunPlan:
    """Apply the first matching rule of §3.1 step 1 (overwrite, create, finished, resume, error).

    An existing folder is locked before anything is decided, so that a second copy of a running command stops
    here instead of writing the same folder; the caller releases the lock (``plan.run.unlock()``).
    """
    explicit = config.resume or config.checkpoint
    if explicit:
        run, first = _explicit_target(config, explicit)
    else:
        run = RunFolder(run_folder_for(config))
        first = run.checkpoint_path("last")
        if not run.path.exists():
            _check_creatable(run.path)
            return RunPlan(run, fresh=True)
    try:
        run.lock()  # a file system without locks is logged once the run starts (train.py)
        read_only = None
    except ReadOnlyRunFolder as error:
        read_only = error
    try:
        plan = _resume_plan(run, first, config, log) if explicit else _plan_existing(run, config, log)
    except BaseException:
        run.unlock()
        raise
    if read_only is not None:
        if plan.finished_epochs is None:
            raise read_only
        return dataclasses.replace(plan, read_only=True)
    return plan


def _plan_existing(run: RunFolder, config: Config, log) -> RunPlan:
    if config.overwrite:
        return RunPlan(run, replace_existing=True)
    if run.checkpoint_path("last").exists() or (config.resume_fallback and good_checkpoints(run)):
        return _resume_plan(run, run.checkpoint_path("last"), config, log)
    epochs = [record["epoch"] for record in read_epoch_records(run.path)[0]]
    if epochs and max(epochs) >= config.nb_epochs - 1:
        return RunPlan(run, finished_epochs=max(epochs) + 1)
    if good_checkpoints(run):
        raise ConfigError(
            f"the run folder {run.path} has no 'last' checkpoint (moved aside by a resume from an older one?); pass "
            "--resume-fallback to continue from its newest good checkpoint, or --overwrite to start again."
        )
    raise ConfigError(
        f"the run folder {run.path} exists but has no 'last' checkpoint to resume from (was it run with "
        "--save-model 0, or killed before its first checkpoint?). Add --overwrite to move it aside and start again."
    )


def _explicit_target(config: Config, explicit: str) -> tuple[RunFolder, Path]:
    """(the run folder, the checkpoint to try first) of --resume/--checkpoint PATH."""
    flag = "--resume" if config.resume != config.checkpoint else "--checkpoint"
    target = Path(explicit)
    if not target.exists():
        raise ConfigError(f"{flag} {explicit}: no such file or run folder; give a checkpoint file or a run folder.")
    if target.is_dir():
        folder, first = target, target / "checkpoints" / "last.pt"
        if target.name == "checkpoints" and (target.parent / "config.json").is_file():
            folder, first = target.parent, target / "last.pt"
    else:
        folder = target.parent.parent if target.parent.name == "checkpoints" else target.parent
        first = target
    if not (folder / "config.json").is_file():
        what = "a run folder" if target.is_dir() else "inside a run folder (RUN/checkpoints/NAME.pt)"
        raise ConfigError(
            f"{flag} {explicit}: not {what}: {folder} has no config.json. Give the folder of a run under log/ or "
            "one of its checkpoint files."
        )
    return RunFolder(folder), first


def _check_creatable(path: Path) -> None:
    """Fail before the data and model are built if the run folder cannot be created where it should be."""
    existing = next(parent for parent in path.parents if parent.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise ConfigError(f"cannot create the run folder {path}: {existing} is a file. Choose another --log-dir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot create the run folder {path}: no permission to write in {existing}. Choose another --log-dir."
        )


def _resume_plan(run: RunFolder, first: Path, config: Config, log) -> RunPlan:
    source, state = load_with_fallback(run, first, config, fallback=config.resume_fallback, log=log)
    completed = last_completed_epoch(state)
    if completed >= config.nb_epochs - 1:
        return RunPlan(run, state, source, finished_epochs=completed + 1)  # the state settles the records
    return RunPlan(run, state, source)


def good_checkpoints(run: RunFolder) -> list[Path]:
    """The checkpoint files of ``run`` that --resume-fallback may try: last, periodic (newest first), best."""
    periodic = sorted(run.checkpoints.glob("ep*.pt"), key=_periodic_epoch, reverse=True)
    return [p for p in [run.checkpoint_path("last"), *periodic, run.checkpoint_path("best")] if p.exists()]


def load_with_fallback(run: RunFolder, first: Path, config: Config, *, fallback: bool, log) -> tuple[Path, dict]:
    """Load ``first``; with ``fallback`` skip damaged checkpoints and take the one of the newest epoch.

    ``first`` (``last``, or the file the user named) is tried first, then ``last``, the newest when it loads.
    Then ``best`` may be newer than every periodic checkpoint or older than some: its epoch is known only once
    it is loaded, so it is loaded next and only the periodic checkpoints of later epochs are tried before it.
    """
    errors = []

    def attempt(candidate: Path) -> dict | None:
        try:
            return _load_matching(candidate, config)
        except CheckpointError as error:
            if not fallback:
                raise
            errors.append(str(error))
            log(f"warning: {error}")
            return None

    others = [p for p in good_checkpoints(run) if p != first]
    last, best = run.checkpoint_path("last"), run.checkpoint_path("best")
    for candidate in [first, last] if last in others else [first]:
        state = attempt(candidate)
        if state is not None:
            if candidate != first:
                log(f"--resume-fallback: resuming from {candidate}")
            return candidate, state
    best_state = attempt(best) if best in others else None
    best_epoch = last_completed_epoch(best_state) if best_state is not None else None
    for candidate in others:
        if candidate in (last, best):
            continue
        if best_epoch is not None and _periodic_epoch(candidate) <= best_epoch:
            break
        state = attempt(candidate)
        if state is not None:
            log(f"--resume-fallback: resuming from {candidate}")
            return candidate, state
    if best_state is not None:
        log(f"--resume-fallback: resuming from {best}")
        return best, best_state
    raise CheckpointError(f"no readable checkpoint in {run.checkpoints}: {' | '.join(errors)}")


def _periodic_epoch(path: Path) -> int:
    """The epoch in a periodic checkpoint's name (ep0012.pt -> 12); -1 for a name that holds none."""
    digits = path.stem[2:]
    return int(digits) if digits.isdigit() else -1


def _load_matching(path: Path, config: Config) -> dict:
    state = load_checkpoint(path, hint=FALLBACK_HINT)
    problems = [entry for entry in RESUME_ENTRIES if entry not in state]
    if not problems:
        clusters = state["clusters"]
        if not (isinstance(clusters, dict) and type(clusters.get("k")) is int and clusters["k"] >= 1):
            problems.append("a positive integer clusters.k")
        if type(state["epoch"]) is not int:
            problems.append("an integer epoch")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} lacks what a resume needs ({', '.join(problems)}); it was altered or written by "
            f"other code.{FALLBACK_HINT}"
        )
    if state.get("config_hash") != config.hash():
        raise ConfigError(
            f"{path} was written by a run with different settings (config hash {state.get('config_hash')}, "
            f"this command's is {config.hash()}). Resume with the same flags, or start a new run."
        )
    return state
