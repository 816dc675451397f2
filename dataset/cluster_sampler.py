"""The epoch's batch plan over all clusters (METHOD §3.6): round-robin learners, one sampler per learner.

The planner is rebuilt at every recluster (with the assignment after removal and merges) and plans one
epoch at a time. A plan depends only on the samplers' state at the epoch start, which is kept so that a
mid-epoch checkpoint can rebuild the same plan and replay it from the next batch (§9.3).

When no learner has B samples, T = max_c ⌊N_c/B⌋ = 0 and the plan is empty. In a run only one case gets
there: every cluster was degenerate, all merged into the largest, and removal left it below B; the
trainer then warns. (A sampler given fewer than B samples still yields one batch per pass, so that no
input crashes it or loops forever, METHOD §6.5; with merges, the planner never asks for it.)
"""

import copy
from dataclasses import dataclass

import numpy as np

from dataset.samplers import ClassBatchSampler, build_batch_sampler
from lib.errors import CheckpointError
from lib.seeding import numpy_generator


@dataclass(frozen=True)
class PlannedBatch:
    learner_id: int
    indices: np.ndarray  # int64 training-set indices, replicas tiled


class ClusterBatchPlanner:
    """One batch sampler per effective learner; plans epochs of K_eff · max_c ⌊N_c/B⌋ batches."""

    def __init__(
        self,
        learner_of_sample: np.ndarray,
        labels: np.ndarray,
        *,
        sampler_name: str,
        batch_size: int,
        samples_per_class: int,
        num_replicas: int,
        small_class_action: str,
        seed: int,
        recluster_index: int,
    ):
        learner_of_sample = np.asarray(learner_of_sample, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if learner_of_sample.shape != labels.shape or labels.ndim != 1:
            raise ValueError(
                f"learner_of_sample {learner_of_sample.shape} and labels {labels.shape} must be equal-length 1-d"
            )
        self.batch_size = batch_size
        self.recluster_index = recluster_index
        kept = np.flatnonzero(learner_of_sample >= 0)
        order = kept[np.argsort(learner_of_sample[kept], kind="stable")]
        ids, counts = np.unique(learner_of_sample[order], return_counts=True)
        self._learner_ids = tuple(int(i) for i in ids)
        pieces = np.split(order, np.cumsum(counts)[:-1]) if len(counts) else []
        self.members: dict[int, np.ndarray] = dict(zip(self._learner_ids, pieces, strict=True))
        self.samplers: dict[int, ClassBatchSampler] = {
            lid: build_batch_sampler(
                sampler_name,
                labels[members],
                batch_size=batch_size,
                samples_per_class=samples_per_class,
                num_replicas=num_replicas,
                small_class_action=small_class_action,
                rng=numpy_generator(seed, "batch-sampler", recluster_index, lid),
            )
            for lid, members in self.members.items()
        }
        self._epoch_start_state = self.state_dict()

    @property
    def learner_ids(self) -> tuple[int, ...]:
        return self._learner_ids

    @property
    def sizes(self) -> dict[int, int]:
        """N_c of every effective learner (absorbed samples included)."""
        return {lid: len(members) for lid, members in self.members.items()}

    def rounds_per_epoch(self) -> int:
        """T = max_c ⌊N_c/B⌋ (0 without learners)."""
        return max((size // self.batch_size for size in self.sizes.values()), default=0)

    def plan_epoch(self, epoch: int) -> list[PlannedBatch]:
        """The epoch's (learner id, batch) sequence; every learner starts a fresh pass."""
        self._epoch_start_state = {**self.state_dict(), "epoch": int(epoch)}
        passes = {lid: sampler.new_pass() for lid, sampler in self.samplers.items()}
        plan = []
        for _ in range(self.rounds_per_epoch()):
            for lid in self._learner_ids:
                positions = next(passes[lid], None)
                if positions is None:
                    passes[lid] = self.samplers[lid].new_pass()
                    positions = next(passes[lid])
                plan.append(PlannedBatch(lid, self.members[lid][positions]))
        return plan

    def state_dict(self) -> dict:
        """Sampler states now, i.e. at the start of the next epoch to plan."""
        return {
            "recluster_index": self.recluster_index,
            "learner_ids": list(self._learner_ids),
            "sizes": [len(self.members[lid]) for lid in self._learner_ids],
            "samplers": [self.samplers[lid].state_dict() for lid in self._learner_ids],
        }

    def epoch_start_state_dict(self) -> dict:
        """Sampler states at the start of the last planned epoch (with its ``epoch``), for mid-epoch resume."""
        return copy.deepcopy(self._epoch_start_state)

    def load_state_dict(self, state: dict) -> None:
        expected = (
            self.recluster_index,
            list(self._learner_ids),
            [len(self.members[lid]) for lid in self._learner_ids],
        )
        found = (
            int(state["recluster_index"]),
            [int(i) for i in state["learner_ids"]],
            [int(n) for n in state["sizes"]],
        )
        if found != expected:
            raise CheckpointError(
                "the checkpoint's batch samplers (recluster {}, learners {}, sizes {}) do not fit the restored "
                "clusters (recluster {}, learners {}, sizes {}); the checkpoint is inconsistent with its own "
                "assignments".format(*found, *expected)
            )
        try:
            for lid, sampler_state in zip(self._learner_ids, state["samplers"], strict=True):
                self.samplers[lid].load_state_dict(sampler_state)
        except ValueError as error:
            raise CheckpointError(f"the checkpoint's batch-sampler state does not fit its clusters: {error}") from error
        self._epoch_start_state = copy.deepcopy(dict(state))
