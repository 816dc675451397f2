"""What a training checkpoint holds and how a run is restored from it (METHOD.md §9.3)."""

import random
from dataclasses import dataclass

import numpy as np
import torch

from lib.checkpoint import save_checkpoint
from lib.runs import RunFolder, epoch_tag


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
    """``best`` on improvement; ``ep{E}`` every ``save_model`` epochs when it is > 1; ``last`` always, last of all.

    A resume trusts ``last`` (its best epoch included), so ``last`` is written after the others: a kill between
    two writes leaves ``best`` ahead of ``last``, never behind it, and redoing the epoch rewrites it.
    """
    if save_model == 0:
        return
    if improved:
        save_checkpoint(run.checkpoint_path("best"), state)
    if save_model > 1 and epoch >= 0 and (epoch + 1) % save_model == 0:
        save_checkpoint(run.checkpoint_path(f"ep{epoch_tag(epoch)}"), state)
    save_checkpoint(run.checkpoint_path("last"), state)
