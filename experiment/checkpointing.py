"""What a training checkpoint holds and how a run is restored from it (METHOD.md §9.3)."""

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from experiment.run_setup import last_completed_epoch
from lib.checkpoint import checkpoint_epoch, save_checkpoint
from lib.runs import RunFolder, epoch_tag, move_aside


@dataclass
class RunFlags:
    """Run-level switches that change during training."""

    recluster_active: bool
    stop_recluster_armed: bool
    full_embedding: bool = False
    best_epoch: int | None = None
    best_value: float | None = None

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def rng_states() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(states["numpy"]))
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def build_state(
    *,
    config_hash: str,
    epoch: int,
    model,
    optimizer,
    criterion,
    scaler,
    cluster_state,
    flags: RunFlags,
    record: dict | None,
    mid_epoch: dict | None = None,
) -> dict:
    return {
        "config_hash": config_hash,
        "epoch": epoch,
        "mid_epoch": mid_epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "criterion": criterion.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "clusters": cluster_state.state_dict(),
        "flags": flags.state_dict(),
        "rng": rng_states(),
        "record": record,
    }


def write_epoch_checkpoints(run: RunFolder, state: dict, *, epoch: int, save_model: int, improved: bool) -> None:
    """``last`` always, first (§9.3); ``best`` on improvement; ``ep{E}`` every ``save_model`` epochs when > 1.

    A kill between these writes leaves ``best`` or ``ep{E}`` behind ``last``; ``settle_checkpoints`` completes
    them from ``last`` when the run continues or is found finished.
    """
    if save_model == 0:
        return
    save_checkpoint(run.checkpoint_path("last"), state)
    if improved:
        save_checkpoint(run.checkpoint_path("best"), state)
    if _periodic_due(epoch, save_model):
        save_checkpoint(run.checkpoint_path(f"ep{epoch_tag(epoch)}"), state)


def settle_run(run: RunFolder, state: dict, *, source: Path | None, save_model: int) -> list[str]:
    """Make the records and the other checkpoints agree with ``state``, loaded from ``source`` (§9.3).

    For a run that resumes, and for a finished one whose ``last`` a kill left ahead of its records. Returns
    what it moved or wrote, for the log.
    """
    completed = last_completed_epoch(state)
    record = None if state.get("mid_epoch") else state["record"]
    moved = run.reconcile_records(completed, record, reclustered_epoch=state["epoch"])
    notes = [f"moved aside records beyond the checkpoint: {path}" for path in moved]
    return notes + settle_checkpoints(run, state, source=source, last_completed=completed, save_model=save_model)


def settle_checkpoints(
    run: RunFolder, state: dict, *, source: Path | None, last_completed: int, save_model: int
) -> list[str]:
    """Make the other checkpoints agree with ``state``, the checkpoint (file ``source``) the run continues from.

    Checkpoints after ``last_completed`` belong to work that will be redone: moved aside (§9.3), ``last`` too
    when the run continues from another file. An epoch-end ``state`` (``record`` set) rewrites what a kill after
    ``last`` left unwritten: ``best`` when its own epoch is the best one, and its periodic checkpoint. Returns
    what it did, for the log.
    """
    done = []
    others = [run.checkpoint_path("last"), run.checkpoint_path("best"), *sorted(run.checkpoints.glob("ep*.pt"))]
    for path in others:
        if source is not None and path.resolve() == Path(source).resolve():
            continue
        epoch = checkpoint_epoch(path)
        if epoch is not None and epoch > last_completed:
            done.append(f"moved aside {path} (epoch {epoch}, after the checkpoint): {move_aside(path)}")
    if state.get("record") is None or save_model == 0:
        return done
    best = run.checkpoint_path("best")
    if state["flags"].get("best_epoch") == last_completed and checkpoint_epoch(best) != last_completed:
        save_checkpoint(best, state)
        done.append(f"wrote {best} from the checkpoint of epoch {last_completed}")
    periodic = run.checkpoint_path(f"ep{epoch_tag(last_completed)}")
    if _periodic_due(last_completed, save_model) and checkpoint_epoch(periodic) != last_completed:
        save_checkpoint(periodic, state)
        done.append(f"wrote {periodic} from the checkpoint of epoch {last_completed}")
    return done


def _periodic_due(epoch: int, save_model: int) -> bool:
    return save_model > 1 and epoch >= 0 and (epoch + 1) % save_model == 0
