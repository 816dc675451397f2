"""The "divide" side of a run: cluster state, the recluster step, and its records (METHOD.md §3.4, §9.2).

``ClusterState`` is what a checkpoint must hold about the clusters; ``recluster_step`` advances it, splits
the masks and keeps the optimizer's mask group consistent.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from dataset.cluster_sampler import ClusterBatchPlanner
from experiment.config import Config
from lib.atomic import atomic_write
from lib.dist import DistContext, broadcast_object
from lib.runs import RunFolder
from metriclearning.clustering import ReclusterResult, SeedStream, recluster
from metriclearning.hierarchy import splits_at_epoch
from metriclearning.optim import replace_mask_group


@dataclass
class ClusterState:
    """The clusters of the current round and everything needed to continue them exactly."""

    k: int
    seeds: SeedStream
    assignment: np.ndarray | None = None  # int32 (N,), after removal, before merges; -1 = removed
    learner_of_sample: np.ndarray | None = None  # int64 (N,), after merges
    merges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    recluster_index: int = -1
    planner: ClusterBatchPlanner | None = None

    def state_dict(self) -> dict:
        return {
            "k": self.k,
            "seeds": self.seeds.state_dict(),
            "assignment": self.assignment,
            "learner_of_sample": self.learner_of_sample,
            "merges": self.merges,
            "recluster_index": self.recluster_index,
            "planner": None if self.planner is None else self.planner.state_dict(),
        }

    def load_state_dict(self, state: dict, *, config: Config, train_labels: np.ndarray, planner_state=None) -> None:
        """Restore; ``planner_state`` overrides the saved sampler state (mid-epoch: the epoch-start state)."""
        self.k = int(state["k"])
        self.seeds.load_state_dict(state["seeds"])
        self.assignment = state["assignment"]
        self.learner_of_sample = state["learner_of_sample"]
        self.merges = state["merges"]
        self.recluster_index = int(state["recluster_index"])
        self.planner = make_planner(self.learner_of_sample, train_labels, config, self.recluster_index)
        self.planner.load_state_dict(planner_state if planner_state is not None else state["planner"])


def make_planner(learner_of_sample, train_labels, config: Config, recluster_index: int) -> ClusterBatchPlanner:
    return ClusterBatchPlanner(
        learner_of_sample,
        train_labels,
        sampler_name=config.batch_sampler,
        batch_size=config.batch_size,
        samples_per_class=config.num_samples_per_class,
        num_replicas=config.num_replicas,
        small_class_action=config.small_class_action,
        seed=config.random_seed,
        recluster_index=recluster_index,
    )


def recluster_step(
    epoch: int,
    *,
    state: ClusterState,
    features: np.ndarray,
    train_labels: np.ndarray,
    config: Config,
    model,
    optimizer: torch.optim.Optimizer,
    mask_lr: float,
    faiss_device: int | None,
    logger: logging.Logger,
    dist: DistContext,
) -> ReclusterResult:
    """Steps 2-7 of §3.4 with the current K; epoch -1 is the initial clustering (no matching, no split).

    Under torchrun rank 0 clusters and every rank applies its result, so all ranks hold the same clusters.
    """
    split = epoch >= 0 and splits_at_epoch(epoch, state.k, config.nb_clusters, config.hierarchy_method)
    result = None
    if dist.is_main:
        result = recluster(
            features,
            train_labels,
            k=state.k,
            k_final=config.nb_clusters,
            previous=state.assignment if epoch >= 0 else None,
            split=split,
            seeds=state.seeds,
            backend=config.backend,
            batch_size=config.batch_size,
            device=faiss_device,
            method=config.clustering_method,
        )
    result, seeds = broadcast_object((result, state.seeds.state_dict()), dist)
    state.seeds.load_state_dict(seeds)
    if result.split.any():
        old_params = list(model.masks.params)
        parents = model.masks.split(result.split.tolist())
        kept = replace_mask_group(optimizer, old_params, list(model.masks.params), parents, mask_lr)
        if kept is not None:
            logger.debug(  # --verbose
                f"epoch {epoch}: optimizer groups rebuilt: {len(parents)} masks at LR {mask_lr:g}, {kept} keep "
                f"their optimizer state, {len(parents) - kept} start fresh"
            )
        logger.info(f"epoch {epoch}: split clusters {np.flatnonzero(result.split).tolist()}: K {state.k} -> {result.k}")
    state.k = result.k
    state.assignment = result.assignment
    state.learner_of_sample = result.learner_of_sample
    state.merges = result.merges
    state.recluster_index += 1
    state.planner = make_planner(result.learner_of_sample, train_labels, config, state.recluster_index)
    for warning in result.warnings:
        logger.warning(f"epoch {epoch}: {warning}")
    logger.info(describe_clusters(epoch, result))
    return result


def describe_clusters(epoch: int, result: ReclusterResult) -> str:
    matching = ""
    if np.isfinite(result.cost_before):
        matching = (
            f"; matching cost {result.cost_before:.0f} -> {result.cost_after:.0f}, "
            f"NMI to previous {result.nmi_prev:.3f}, permutation {result.permutation.tolist()}"
        )
    merges = f"; merged {result.merges.tolist()}" if len(result.merges) else ""
    return (
        f"recluster at epoch {epoch}: K={result.k}, sizes {result.sizes.tolist()}, classes "
        f"{result.n_classes.tolist()}, removed {result.n_removed.tolist()}{matching}{merges}"
    )


def save_recluster_record(run: RunFolder, epoch: int, result: ReclusterResult, labels, masks: torch.Tensor) -> None:
    """``recluster/e{E}.npz`` with the arrays of METHOD.md §9.2 (written once, atomically)."""
    arrays = {
        "assignment": result.assignment.astype(np.int32),
        "labels": np.asarray(labels, dtype=np.int64),
        "sizes": result.sizes.astype(np.int64),
        "n_classes": result.n_classes.astype(np.int64),
        "n_removed": result.n_removed.astype(np.int64),
        "permutation": result.permutation.astype(np.int64),
        "cost_before": np.float64(result.cost_before),
        "cost_after": np.float64(result.cost_after),
        "nmi_prev": np.float64(result.nmi_prev),
        "split": result.split.astype(bool),
        "merges": result.merges.astype(np.int64).reshape(-1, 2),
        "masks": masks.detach().float().cpu().numpy().astype(np.float16),
    }
    atomic_write(run.recluster_path(epoch), lambda handle: np.savez_compressed(handle, **arrays))
