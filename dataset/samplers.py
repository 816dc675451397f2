"""Per-cluster batch samplers (METHOD §6): balanced_old, adaptbalanced, randombatch, npairs.

A sampler works on positions 0..n-1 of one cluster's member list and yields int64 position batches.
It is built once per recluster and keeps its shuffled per-class lists, read cursors and generator
across passes and epochs, so its ``state_dict`` is all a checkpoint needs to continue exactly.
A pass over a non-empty cluster always yields at least one batch, even when the cluster holds fewer
than B samples (§6.5: degenerate clusters must not stall or crash the planner).
"""

import logging
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from lib.errors import ConfigError

logger = logging.getLogger(__name__)

SAMPLER_NAMES = ("balanced_old", "adaptbalanced", "randombatch", "npairs")
SMALL_CLASS_ACTIONS = ("sample_other", "smaller_batch", "duplicate")
RANDOMBATCH_MAX_REJECTIONS = 100


class ClassBatchSampler(Protocol):
    def new_pass(self) -> Iterator[np.ndarray]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def _as_int64(values) -> np.ndarray:
    """Checkpoint code may hand arrays back as numpy arrays, tensors or lists."""
    return np.asarray(values, dtype=np.int64).copy()


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated index ranges [starts[i], starts[i] + lengths[i])."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - ends + lengths, lengths) + np.arange(int(ends[-1]) if len(ends) else 0)


class _ClassLists:
    """Shuffled per-class member lists with read cursors, implementing §6's "taking t samples of class y"."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator):
        self.rng = rng
        _, class_of, self.sizes = np.unique(labels, return_inverse=True, return_counts=True)
        self.class_of = class_of.astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.members = np.argsort(self.class_of, kind="stable").astype(np.int64)
        # Sorting by (class, random key) shuffles every class's segment in one vectorised step.
        self.lists = np.lexsort((rng.random(len(labels)), self.class_of)).astype(np.int64)
        self.cursors = np.zeros(len(self.sizes), dtype=np.int64)

    @property
    def n_classes(self) -> int:
        return len(self.sizes)

    def _within_segments(self, lengths: np.ndarray) -> np.ndarray:
        """A permutation of concatenated segments of these lengths that shuffles inside each segment only."""
        return np.lexsort((self.rng.random(int(lengths.sum())), np.repeat(np.arange(len(lengths)), lengths)))

    def take(self, classes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Take counts[i] samples of each classes[i], concatenated in that order; classes must be distinct.

        Vectorised over the classes: planning an SOP epoch takes tens of thousands of takes.
        """
        classes = np.asarray(classes, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        offsets, sizes, cursors = self.offsets[classes], self.sizes[classes], self.cursors[classes]
        starts = np.cumsum(counts) - counts
        out = np.empty(int(counts.sum()), dtype=np.int64)
        unread = sizes - cursors >= counts
        repeat = sizes < counts
        fresh = ~unread & ~repeat
        # Enough unread entries: the next t of the shuffled list.
        out[_segments(starts[unread], counts[unread])] = self.lists[
            _segments(offsets[unread] + cursors[unread], counts[unread])
        ]
        # Fewer unread than t and |y| < t: t draws with replacement.
        if repeat.any():
            draws = self.rng.integers(0, np.repeat(sizes[repeat], counts[repeat]))
            out[_segments(starts[repeat], counts[repeat])] = self.members[
                np.repeat(offsets[repeat], counts[repeat]) + draws
            ]
        # Fewer unread than t but |y| >= t: t distinct random members, the head of a fresh shuffle.
        if fresh.any():
            shuffled = _segments(offsets[fresh], sizes[fresh])[self._within_segments(sizes[fresh])]
            head = _segments(np.cumsum(sizes[fresh]) - sizes[fresh], counts[fresh])
            out[_segments(starts[fresh], counts[fresh])] = self.members[shuffled[head]]
        cursors = cursors + counts
        done = cursors >= sizes
        cursors[done] = 0
        self.cursors[classes] = cursors
        if done.any():
            positions = _segments(offsets[done], sizes[done])
            self.lists[positions] = self.lists[positions[self._within_segments(sizes[done])]]
        return out

    def state_dict(self) -> dict:
        return {"lists": self.lists.copy(), "cursors": self.cursors.copy()}

    def load_state_dict(self, state: dict) -> None:
        lists, cursors = _as_int64(state["lists"]), _as_int64(state["cursors"])
        if lists.shape != self.lists.shape or cursors.shape != self.cursors.shape:
            raise ValueError(
                f"batch-sampler state holds {len(lists)} samples in {len(cursors)} classes, but the cluster has "
                f"{len(self.lists)} samples in {len(self.cursors)} classes"
            )
        if not np.array_equal(self.class_of[lists], self.class_of[self.members]):
            raise ValueError("batch-sampler state does not match the cluster's class labels")
        self.lists, self.cursors = lists, cursors


class _ClassListSampler:
    """Common state handling of the samplers built on shuffled per-class lists."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator):
        self.rng = rng
        self.n = len(labels)
        self.classes = _ClassLists(labels, rng)

    def state_dict(self) -> dict:
        return {**self.classes.state_dict(), "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        self.classes.load_state_dict(state)
        self.rng.bit_generator.state = state["rng"]


class BalancedOldSampler(_ClassListSampler):
    """§6.1: C_b = B/S classes per batch, S samples each; ⌊N_c/B⌋ batches per pass."""

    def __init__(self, labels: np.ndarray, *, batch_size: int, samples_per_class: int, rng: np.random.Generator):
        super().__init__(labels, rng)
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.classes_per_batch = batch_size // samples_per_class

    def _batch(self) -> np.ndarray:
        n_classes, c_b, s = self.classes.n_classes, self.classes_per_batch, self.samples_per_class
        if n_classes >= c_b:
            drawn = self.rng.choice(n_classes, size=c_b, replace=False)
            return self.classes.take(drawn, np.full(c_b, s))
        drawn = self.rng.choice(n_classes, size=c_b, replace=True)
        # A class drawn twice must read its list twice in turn, so take one class at a time.
        return np.concatenate([self.classes.take(drawn[i : i + 1], np.array([s])) for i in range(c_b)])

    def new_pass(self) -> Iterator[np.ndarray]:
        for _ in range(max(1, self.n // self.batch_size)):
            yield self._batch()


class AdaptBalancedSampler(_ClassListSampler):
    """§6.2: class-balanced batches whose pass length is governed by the count of images taken."""

    def __init__(
        self,
        labels: np.ndarray,
        *,
        batch_size: int,
        samples_per_class: int,
        num_replicas: int,
        small_class_action: str,
        rng: np.random.Generator,
    ):
        super().__init__(labels, rng)
        self.num_replicas = num_replicas
        self.distinct = batch_size // num_replicas
        self.small_class_action = small_class_action
        n_classes = self.classes.n_classes
        self.per_class = samples_per_class
        self.classes_per_batch = self.distinct // samples_per_class
        if n_classes < self.classes_per_batch:
            self.per_class = self.distinct // n_classes
            self.classes_per_batch = n_classes
            logger.warning(
                "adaptbalanced: the cluster has %d classes, fewer than the %d a batch needs; using %d samples "
                "per class",
                n_classes,
                self.distinct // samples_per_class,
                self.per_class,
            )
        self.extra = self.distinct - self.per_class * self.classes_per_batch

    def _batch(self) -> np.ndarray:
        n_classes = self.classes.n_classes
        extra = np.zeros(n_classes, dtype=np.int64)
        if self.extra:
            extra[self.rng.choice(n_classes, size=self.extra, replace=False)] = 1
        drawn = self.rng.choice(n_classes, size=self.classes_per_batch, replace=False)
        counts = self.per_class + extra[drawn]
        if self.small_class_action != "duplicate":
            counts = np.minimum(counts, self.classes.sizes[drawn])
        batch = self.classes.take(drawn, counts)
        short = self.distinct - len(batch)
        if self.small_class_action == "sample_other" and short > 0:
            free = np.ones(self.n, dtype=bool)
            free[batch] = False
            pool = np.flatnonzero(free)
            fill = self.rng.choice(pool, size=min(short, len(pool)), replace=False)
            batch = np.concatenate([batch, fill])
        return batch

    def new_pass(self) -> Iterator[np.ndarray]:
        count = 0
        first = True
        while count + self.distinct <= self.n or first:
            first = False
            batch = self._batch()
            count += len(batch)
            yield np.tile(batch, self.num_replicas)


class RandomBatchSampler:
    """§6.3: chunks of a fresh permutation, rejecting single-label chunks; ⌊N_c/B⌋ batches per pass."""

    def __init__(self, labels: np.ndarray, *, batch_size: int, num_replicas: int, rng: np.random.Generator):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n = len(labels)
        self.rng = rng
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.chunk = min(batch_size // num_replicas, self.n)
        self.perm = rng.permutation(self.n).astype(np.int64)
        self.pointer = 0

    def _restart(self) -> None:
        self.perm = self.rng.permutation(self.n).astype(np.int64)
        self.pointer = 0

    def _next_chunk(self) -> np.ndarray:
        if self.pointer + self.chunk > self.n:
            self._restart()
        chunk = self.perm[self.pointer : self.pointer + self.chunk].copy()
        self.pointer += self.chunk
        return chunk

    def _batch(self) -> np.ndarray:
        rejections = 0
        while True:
            chunk = self._next_chunk()
            chunk_labels = self.labels[chunk]
            if (chunk_labels != chunk_labels[0]).any():
                return chunk
            if rejections < RANDOMBATCH_MAX_REJECTIONS:
                rejections += 1
                continue
            # §10 #47: a cluster dominated by one class must not stall the sampler.
            others = np.flatnonzero(self.labels != chunk_labels[0])
            if len(others):
                chunk[-1] = self.rng.choice(others)
            return chunk

    def new_pass(self) -> Iterator[np.ndarray]:
        self._restart()
        for _ in range(max(1, self.n // self.batch_size)):
            yield np.tile(self._batch(), self.num_replicas)

    def state_dict(self) -> dict:
        return {"perm": self.perm.copy(), "pointer": self.pointer, "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        perm = _as_int64(state["perm"])
        if perm.shape != (self.n,):
            raise ValueError(f"randombatch state holds a permutation of {len(perm)} samples, not {self.n}")
        self.perm, self.pointer = perm, int(state["pointer"])
        self.rng.bit_generator.state = state["rng"]


class NPairsSampler:
    """§6.4: ⌈N_c/B⌉ batches of ⌈B/S⌉ groups, each S draws with replacement from one random class."""

    def __init__(self, labels: np.ndarray, *, batch_size: int, samples_per_class: int, rng: np.random.Generator):
        self.rng = rng
        self.n = len(labels)
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        _, class_of, self.sizes = np.unique(labels, return_inverse=True, return_counts=True)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.members = np.argsort(class_of, kind="stable").astype(np.int64)

    def _batch(self) -> np.ndarray:
        groups = -(-self.batch_size // self.samples_per_class)
        drawn = self.rng.integers(len(self.sizes), size=groups)
        picks = self.rng.integers(0, self.sizes[drawn][:, None], size=(groups, self.samples_per_class))
        return self.members[self.offsets[drawn][:, None] + picks].ravel()[: self.batch_size]

    def new_pass(self) -> Iterator[np.ndarray]:
        for _ in range(-(-self.n // self.batch_size)):
            yield self._batch()

    def state_dict(self) -> dict:
        return {"rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def _check_shape(name: str, batch_size: int, samples_per_class: int, num_replicas: int) -> None:
    """Impossible batch shapes (§2.3) are configuration errors, whoever builds the sampler."""
    if batch_size < 1 or samples_per_class < 1 or num_replicas < 1:
        raise ConfigError(
            f"--batch-size ({batch_size}), --num-samples-per-class ({samples_per_class}) and --num-replicas "
            f"({num_replicas}) must be positive"
        )
    if name in ("balanced_old", "npairs") and num_replicas != 1:
        raise ConfigError(f"--num-replicas > 1 is not supported by --batch-sampler {name}; use adaptbalanced")
    if name != "randombatch" and samples_per_class < 2:
        raise ConfigError(f"--batch-sampler {name} needs --num-samples-per-class >= 2 to form positive pairs")
    if name == "balanced_old" and batch_size % samples_per_class:
        raise ConfigError(
            f"balanced_old needs --batch-size ({batch_size}) divisible by --num-samples-per-class ({samples_per_class})"
        )
    if name in ("adaptbalanced", "randombatch") and batch_size % num_replicas:
        raise ConfigError(f"--batch-size ({batch_size}) must be divisible by --num-replicas ({num_replicas})")
    if name == "adaptbalanced" and (batch_size // num_replicas) % samples_per_class:
        raise ConfigError(
            f"adaptbalanced needs --batch-size / --num-replicas ({batch_size // num_replicas}) divisible by "
            f"--num-samples-per-class ({samples_per_class})"
        )
    if name == "randombatch" and batch_size // num_replicas < 2:
        raise ConfigError("randombatch needs --batch-size / --num-replicas >= 2")


def build_batch_sampler(
    name: str,
    labels: np.ndarray,
    *,
    batch_size: int,
    samples_per_class: int,
    num_replicas: int = 1,
    small_class_action: str = "sample_other",
    rng: np.random.Generator,
) -> ClassBatchSampler:
    """The batch sampler ``name`` over one cluster; ``labels`` is the class of each member position."""
    if name not in SAMPLER_NAMES:
        raise ConfigError(f"unknown --batch-sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    if small_class_action not in SMALL_CLASS_ACTIONS:
        raise ConfigError(
            f"unknown small-class action {small_class_action!r}; choose one of {', '.join(SMALL_CLASS_ACTIONS)}"
        )
    _check_shape(name, batch_size, samples_per_class, num_replicas)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"a batch sampler needs a non-empty 1-d label array, got shape {labels.shape}")
    if name == "balanced_old":
        return BalancedOldSampler(labels, batch_size=batch_size, samples_per_class=samples_per_class, rng=rng)
    if name == "adaptbalanced":
        return AdaptBalancedSampler(
            labels,
            batch_size=batch_size,
            samples_per_class=samples_per_class,
            num_replicas=num_replicas,
            small_class_action=small_class_action,
            rng=rng,
        )
    if name == "randombatch":
        return RandomBatchSampler(labels, batch_size=batch_size, num_replicas=num_replicas, rng=rng)
    return NPairsSampler(labels, batch_size=batch_size, samples_per_class=samples_per_class, rng=rng)
