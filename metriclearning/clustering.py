"""The divide step: k-means with acceptance and retries, cluster splits, removal of unpaired samples and
the per-round merge of degenerate clusters (METHOD.md §3.4 steps 2 and 4-7).

Everything here works on numpy arrays indexed by training-set position. Per-sample work is vectorised
(bincount on combined (cluster, class) keys), so a recluster at SOP scale costs little beyond k-means.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from lib.kmeans import kmeans
from metriclearning.matching import match_to_previous

DEFAULT_SEED = 1234  # s0 of every k-means call when -crs is absent
SEED_HIGH = 999999  # -crs draws are integers in [0, SEED_HIGH)
CLUSTERING_METHODS = ("kmeans", "kmeans_adaptive_centroids")


class SeedStream:
    """The k-means seeds s0 of §3.4 step 2: 1234 without ``-crs``, else draws from RandomState(crs).

    Advanced once per k-means call and once per split cluster, in call order; saved in checkpoints.
    """

    def __init__(self, crs: int | None):
        self.crs = crs
        self._rng = None if crs is None else np.random.RandomState(crs)

    def next_seed(self) -> int:
        if self._rng is None:
            return DEFAULT_SEED
        return int(self._rng.randint(0, SEED_HIGH))

    def state_dict(self) -> dict:
        """Plain containers only (ints, floats, a list of ints), so ``torch.load(weights_only=True)`` works."""
        if self._rng is None:
            return {"crs": None, "state": None}
        name, keys, pos, has_gauss, cached_gaussian = self._rng.get_state(legacy=True)
        return {
            "crs": self.crs,
            "state": {
                "name": str(name),
                "keys": [int(key) for key in keys],
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.crs = state["crs"]
        if state["state"] is None:
            self._rng = None
            return
        saved = state["state"]
        self._rng = np.random.RandomState()
        keys = np.asarray(saved["keys"], dtype=np.uint32)
        self._rng.set_state((saved["name"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))


def _class_index(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense class ids 0..C-1 (in ascending label order) and C."""
    classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), len(classes)


def _pair_counts(assignment: np.ndarray, class_idx: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """counts[c, y] = number of samples of class y in cluster c (samples with id -1 are ignored)."""
    assignment = np.asarray(assignment, dtype=np.int64)
    kept = assignment >= 0
    keys = assignment[kept] * n_classes + class_idx[kept]
    return np.bincount(keys, minlength=k * n_classes)[: k * n_classes].reshape(k, n_classes)


def _failing_clusters(assignment: np.ndarray, class_idx: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Ids of the clusters without 2 classes that each have >= 2 samples in it."""
    if k == 1:
        return np.zeros(0, dtype=np.int64)
    paired_classes = (_pair_counts(assignment, class_idx, n_classes, k) >= 2).sum(axis=1)
    return np.flatnonzero(paired_classes < 2)


def acceptable(assignment: np.ndarray, labels: np.ndarray, k: int) -> bool:
    """The acceptance rule of §3.4 step 2: every cluster 0..k-1 holds >= 2 classes with >= 2 samples each.

    An empty cluster fails; k = 1 always passes.
    """
    class_idx, n_classes = _class_index(labels)
    return len(_failing_clusters(assignment, class_idx, n_classes, k)) == 0


def _rejection_warning(what: str, failing: np.ndarray, trials: int, seed: int) -> str:
    shown = ", ".join(str(c) for c in failing[:10]) + (", ..." if len(failing) > 10 else "")
    return (
        f"{what}: no acceptable clustering in {trials} trial(s) (seeds {seed}..{seed + trials - 1}); using the "
        f"last one. Cluster(s) without 2 classes of >= 2 samples: {shown}. They are merged for this round."
    )


def _kmeans_until_acceptable(
    features: np.ndarray,
    class_idx: np.ndarray,
    n_classes: int,
    k: int,
    seed: int,
    *,
    backend: str,
    device: int | None,
    trials: int,
    what: str,
) -> tuple[np.ndarray, list[str]]:
    """Trial t runs k-means with seed + t; the first accepted trial wins, else the last one with a warning."""
    k_run = min(k, features.shape[0])  # K > N leaves clusters empty (they fail) instead of crashing
    for trial in range(trials):
        assignment = kmeans(features, k_run, seed + trial, backend, device=device).assignment
        failing = _failing_clusters(assignment, class_idx, n_classes, k)
        if len(failing) == 0:
            return assignment, []
    return assignment, [_rejection_warning(what, failing, trials, seed)]


def _previous_means(features: np.ndarray, previous: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Means of the current features over the previous clusters' kept members (initial centroids).

    An empty previous cluster starts from a seeded random sample, so k-means still gets k centroids.
    """
    sums, counts = _cluster_sums(features, previous, k)
    centroids = sums / np.maximum(counts, 1)[:, None]
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        picks = np.random.RandomState(seed).choice(features.shape[0], size=len(empty), replace=False)
        centroids[empty] = features[picks]
    return centroids.astype(np.float32)


def cluster_with_retries(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    seeds: SeedStream,
    backend: str,
    device: int | None = None,
    trials: int = 30,
    previous: np.ndarray | None = None,
    method: str = "kmeans",
) -> tuple[np.ndarray, list[str]]:
    """Flat k-means with the current K (§3.4 step 2): the assignment (N,) int64 and warnings to log.

    Draws one seed from ``seeds`` per call, also when K = 1 (no k-means runs then), so that skipping a
    trivial recluster cannot shift the ``-crs`` stream. ``kmeans_adaptive_centroids`` with K > 1 and a
    previous assignment runs once from the previous clusters' means, without retries.
    """
    if method not in CLUSTERING_METHODS:
        raise ValueError(f"unknown clustering method {method!r}; choose one of {', '.join(CLUSTERING_METHODS)}")
    seed = seeds.next_seed()
    n = features.shape[0]
    if k == 1:
        return np.zeros(n, dtype=np.int64), []
    class_idx, n_classes = _class_index(labels)
    if method == "kmeans_adaptive_centroids" and previous is not None and k <= n:
        init = _previous_means(features, previous, k, seed)
        assignment = kmeans(features, k, seed, backend, device=device, init_centroids=init).assignment
        failing = _failing_clusters(assignment, class_idx, n_classes, k)
        warnings = [_rejection_warning(f"adaptive k-means with K={k}", failing, 1, seed)] if len(failing) else []
        return assignment, warnings
    return _kmeans_until_acceptable(
        features,
        class_idx,
        n_classes,
        k,
        seed,
        backend=backend,
        device=device,
        trials=trials,
        what=f"k-means with K={k}",
    )


def clusters_to_split(assignment: np.ndarray, k: int, k_final: int) -> np.ndarray:
    """Which of the k clusters split (bool (k,)): all when 2k <= K_final, none when k >= K_final, else the
    (K_final - k) largest by current size (before removal), ties to the lower id (§3.2 partial last level)."""
    if 2 * k <= k_final:
        return np.ones(k, dtype=bool)
    chosen = np.zeros(k, dtype=bool)
    if k >= k_final:
        return chosen
    assignment = np.asarray(assignment, dtype=np.int64)
    sizes = np.bincount(assignment[assignment >= 0], minlength=k)[:k]
    chosen[np.argsort(-sizes, kind="stable")[: k_final - k]] = True
    return chosen


def _deal(members_class: np.ndarray) -> tuple[np.ndarray, str]:
    """Fallback halves (0/1 per member, members in ascending index order) for a cluster k-means cannot split:
    a single class is dealt sample by sample, otherwise whole classes are dealt in ascending class id."""
    distinct, rank = np.unique(members_class, return_inverse=True)
    if len(distinct) <= 1:
        return np.arange(len(members_class), dtype=np.int64) % 2, "it has a single class: samples dealt alternately"
    return rank.reshape(-1).astype(np.int64) % 2, "its features are all identical: classes dealt alternately"


def split_clusters(
    features: np.ndarray,
    labels: np.ndarray,
    assignment: np.ndarray,
    to_split: Sequence[bool],
    *,
    seeds: SeedStream,
    backend: str,
    device: int | None = None,
    trials: int = 30,
) -> tuple[np.ndarray, list[int], list[str]]:
    """Split the chosen clusters in two with a 2-means on their members (§3.4 step 4).

    Returns the new assignment (N,) int64, the parent (old id) of every new id, and warnings. New ids: the
    old clusters in ascending order; an unsplit one takes the next id, a split one the next two, the first
    for centroid 0. One seed is drawn per split cluster, in ascending id order. Samples with id -1 stay -1.
    """
    to_split = np.asarray(to_split, dtype=bool)
    assignment = np.asarray(assignment, dtype=np.int64)
    k = len(to_split)
    width = np.where(to_split, 2, 1)
    first_new_id = np.concatenate([[0], np.cumsum(width)[:-1]]).astype(np.int64)
    parent_of_new = np.repeat(np.arange(k), width).tolist()
    lookup = np.append(first_new_id, -1)  # id -1 maps to -1
    new_assignment = lookup[assignment]

    class_idx, n_classes = _class_index(labels)
    kept = np.flatnonzero(assignment >= 0)
    order = kept[np.argsort(assignment[kept], kind="stable")]  # members of each cluster, ascending index
    bounds = np.concatenate([[0], np.cumsum(np.bincount(assignment[kept], minlength=k)[:k])])
    warnings: list[str] = []
    for cluster in np.flatnonzero(to_split):
        seed = seeds.next_seed()
        members = order[bounds[cluster] : bounds[cluster + 1]]
        if len(members) == 0:
            warnings.append(f"split of cluster {cluster}: it is empty, so both children are empty")
            continue
        member_features = features[members]
        single_class = len(np.unique(class_idx[members])) == 1
        if single_class or bool((member_features == member_features[0]).all()):
            halves, reason = _deal(class_idx[members])
            warnings.append(f"split of cluster {cluster}: 2-means cannot split it because {reason}")
        else:
            halves, trial_warnings = _kmeans_until_acceptable(
                member_features,
                class_idx[members],
                n_classes,
                2,
                seed,
                backend=backend,
                device=device,
                trials=trials,
                what=f"split of cluster {cluster}",
            )
            warnings.extend(trial_warnings)
        new_assignment[members] = first_new_id[cluster] + halves
    return new_assignment, parent_of_new, warnings


def remove_unpaired(assignment: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """§3.4 step 5: a sample whose class has exactly one sample in its cluster gets id -1."""
    assignment = np.asarray(assignment, dtype=np.int64)
    class_idx, n_classes = _class_index(labels)
    k = int(assignment.max()) + 1 if assignment.size else 0
    counts = _pair_counts(assignment, class_idx, n_classes, max(k, 1))
    alone = np.zeros(assignment.shape, dtype=bool)
    kept = assignment >= 0
    alone[kept] = counts[assignment[kept], class_idx[kept]] == 1
    return np.where(alone, -1, assignment)


def cluster_stats(
    assignment_after_removal: np.ndarray, labels: np.ndarray, removed_from: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Per-cluster counts after removal (§10 #16): ``sizes`` (N_c), ``n_classes``, ``n_removed``, each (k,).

    ``removed_from`` is the assignment before removal: it says which cluster each removed sample left.
    """
    after = np.asarray(assignment_after_removal, dtype=np.int64)
    before = np.asarray(removed_from, dtype=np.int64)
    class_idx, n_classes = _class_index(labels)
    removed = (after < 0) & (before >= 0)
    return {
        "sizes": np.bincount(after[after >= 0], minlength=k)[:k].astype(np.int64),
        "n_classes": (_pair_counts(after, class_idx, n_classes, k) > 0).sum(axis=1).astype(np.int64),
        "n_removed": np.bincount(before[removed], minlength=k)[:k].astype(np.int64),
    }


def _cluster_sums(features: np.ndarray, assignment: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster feature sums (k, d) float64 and member counts (k,), via one sparse product (no copy of
    the features)."""
    assignment = np.asarray(assignment, dtype=np.int64)
    kept = np.flatnonzero((assignment >= 0) & (assignment < k))
    indicator = scipy.sparse.csr_matrix(
        (np.ones(len(kept), dtype=features.dtype), (assignment[kept], kept)), shape=(k, features.shape[0])
    )
    sums = np.asarray(indicator @ features, dtype=np.float64)
    return sums, np.bincount(assignment[kept], minlength=k)[:k]


def merge_degenerate(
    assignment_after_removal: np.ndarray,
    labels: np.ndarray,
    features: np.ndarray,
    k: int,
    batch_size: int,
    *,
    before_removal: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """§3.4 step 6: merge each degenerate cluster (< 2 classes or N_c < B after removal) for this round.

    Returns the learner id of every sample (-1 = removed), the merges (M, 2) int64 as (degenerate,
    absorbing) pairs in ascending order, and warnings. The target is the non-degenerate cluster with the
    nearest centroid (mean of the features of all members before removal; Euclidean; ties to the lower id).
    If every non-empty cluster is degenerate, all go into the largest N_c (ties to the lower id). Empty
    clusters merge nowhere: their learners just get no batches.
    """
    after = np.asarray(assignment_after_removal, dtype=np.int64)
    stats = cluster_stats(after, labels, before_removal, k)
    sizes = stats["sizes"]
    degenerate = (stats["n_classes"] < 2) | (sizes < batch_size)
    to_merge = np.flatnonzero(degenerate & (sizes > 0))
    healthy = np.flatnonzero(~degenerate)
    warnings: list[str] = []
    if len(to_merge) == 0:
        targets = np.zeros(0, dtype=np.int64)
    elif len(healthy) == 0:
        largest = int(np.argmax(sizes))
        to_merge = to_merge[to_merge != largest]
        targets = np.full(len(to_merge), largest, dtype=np.int64)
        warnings.append(
            f"every cluster is degenerate (fewer than 2 classes or fewer than {batch_size} samples); all are "
            f"merged into the largest, cluster {largest}, for this round"
        )
    else:
        sums, counts = _cluster_sums(features, before_removal, k)
        centroids = sums / np.maximum(counts, 1)[:, None]
        gaps = centroids[to_merge, None, :] - centroids[None, healthy, :]
        targets = healthy[np.argmin(np.sqrt((gaps**2).sum(axis=2)), axis=1)]
    for cluster, target in zip(to_merge, targets, strict=True):
        warnings.append(
            f"cluster {cluster} is degenerate ({sizes[cluster]} samples, {stats['n_classes'][cluster]} "
            f"classes after removal; needs 2 classes and {batch_size} samples): merged into cluster {target} "
            f"for this round"
        )
    learner = np.arange(k, dtype=np.int64)
    learner[to_merge] = targets
    learner_of_sample = np.where(after >= 0, learner[np.maximum(after, 0)], -1)
    merges = np.stack([to_merge.astype(np.int64), targets], axis=1).reshape(-1, 2)
    return learner_of_sample, merges, warnings


@dataclass(frozen=True)
class ReclusterResult:
    """Everything the training loop needs after a recluster, and the content of ``recluster/e*.npz``."""

    assignment: np.ndarray  # int32 (N,): after matching, split and removal; -1 = removed; pre-merge
    learner_of_sample: np.ndarray  # int64 (N,): learner id after the merges; -1 = removed
    sizes: np.ndarray  # int64 (K,): N_c after removal
    n_classes: np.ndarray  # int64 (K,)
    n_removed: np.ndarray  # int64 (K,)
    permutation: np.ndarray  # int64 (K_prev,): matched id of each pre-matching cluster
    cost_before: float  # NaN when there was nothing to match (initial clustering)
    cost_after: float
    nmi_prev: float
    split: np.ndarray  # bool (K_prev,)
    parent_of_new: np.ndarray  # int64 (K,): the pre-split cluster (and mask) each new cluster comes from
    merges: np.ndarray  # int64 (M, 2)
    warnings: list[str]

    @property
    def k(self) -> int:
        return len(self.parent_of_new)


def recluster(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    k: int,
    k_final: int,
    previous: np.ndarray | None,
    split: bool,
    seeds: SeedStream,
    backend: str,
    batch_size: int,
    device: int | None = None,
    method: str = "kmeans",
    trials: int = 30,
) -> ReclusterResult:
    """Steps 2-7 of §3.4 on the extracted ``features`` (N, d) float32, with the current K = ``k``.

    ``previous`` is the last recorded assignment (after removal, pre-merge), or None for the initial
    clustering, which skips matching. ``split`` allows step 4 (``top_bot``, e > 0); it splits only while
    k < K_final.
    """
    labels = np.asarray(labels)
    flat, warnings = cluster_with_retries(
        features,
        labels,
        k,
        seeds=seeds,
        backend=backend,
        device=device,
        trials=trials,
        previous=previous,
        method=method,
    )
    if previous is None:
        permutation = np.arange(k, dtype=np.int64)
        cost_before = cost_after = nmi_prev = float("nan")
    else:
        if int(np.max(previous, initial=-1)) >= k:
            raise ValueError(f"the previous assignment has ids >= K={k}; it must come from the same K")
        matched = match_to_previous(flat, previous, k, k)
        flat, permutation = matched.assignment, matched.permutation
        cost_before, cost_after, nmi_prev = matched.cost_before, matched.cost_after, matched.nmi_prev
    chosen = clusters_to_split(flat, k, k_final) if split else np.zeros(k, dtype=bool)
    if chosen.any():
        before_removal, parents, split_warnings = split_clusters(
            features, labels, flat, chosen, seeds=seeds, backend=backend, device=device, trials=trials
        )
        warnings.extend(split_warnings)
    else:
        before_removal, parents = flat, list(range(k))
    k_new = len(parents)
    after = remove_unpaired(before_removal, labels)
    stats = cluster_stats(after, labels, before_removal, k_new)
    learner_of_sample, merges, merge_warnings = merge_degenerate(
        after, labels, features, k_new, batch_size, before_removal=before_removal
    )
    warnings.extend(merge_warnings)
    return ReclusterResult(
        assignment=after.astype(np.int32),
        learner_of_sample=learner_of_sample,
        sizes=stats["sizes"],
        n_classes=stats["n_classes"],
        n_removed=stats["n_removed"],
        permutation=permutation,
        cost_before=cost_before,
        cost_after=cost_after,
        nmi_prev=nmi_prev,
        split=chosen,
        parent_of_new=np.asarray(parents, dtype=np.int64),
        merges=merges,
        warnings=warnings,
    )
