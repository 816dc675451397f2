"""In-batch miners of §5.4. Each returns (anchors, positives, negatives) int64 index tensors that any
triplet-consuming loss accepts.

Synchronisation policy: every size that depends on the batch (the number of negatives per anchor q, which
anchors emit triplets, how many pairs each keeps) is a function of the labels alone, so it is computed on
the host from the labels. The device then runs fixed-shape work only (matrix products, sorts, top-k,
gathers, random draws from the caller's generator) and never waits.
Pass the labels as the CPU tensor the loader produced (or a NumPy array): then the miner needs no
synchronisation at all and copies the labels to the embeddings' device asynchronously. Labels that already
live on an accelerator are fetched to the host once per call, which is one synchronisation per batch.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from lib.errors import ConfigError
from metriclearning.distances import miner_distance_matrix, positive_mask

Triplets = tuple[Tensor, Tensor, Tensor]
Labels = Tensor | np.ndarray
BETA0 = 1.2
CUTOFF = 0.5


class Miner(Protocol):
    skips_single_class_batches: bool

    def __call__(self, embeddings: Tensor, labels: Labels, generator: torch.Generator | None = None) -> Triplets:
        """Index triples (a, p, n), int64 on the embeddings' device; labels (B,) on the CPU or the device."""
        ...


@dataclass(frozen=True)
class LabelStats:
    """Host-side facts about a batch's labels that fix the miners' output sizes."""

    class_sizes: np.ndarray  # (B,) size of each sample's class within the batch
    positive_table: np.ndarray  # (B, max(1, largest class - 1)): P_i ascending, padded with B

    @classmethod
    def from_labels(cls, labels: Labels) -> "LabelStats":
        host = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        host = host.reshape(-1)
        size = host.shape[0]
        order = np.argsort(host, kind="stable")  # stable: each class's members stay ascending
        sorted_labels = host[order]
        first = np.searchsorted(sorted_labels, host, side="left")
        class_sizes = np.searchsorted(sorted_labels, host, side="right") - first
        rank = np.empty(size, dtype=np.int64)
        rank[order] = np.arange(size)
        rank -= first  # position of sample i among its class's members
        columns = np.arange(max(int(class_sizes.max(initial=1)) - 1, 1))
        member = first[:, None] + columns[None, :] + (columns[None, :] >= rank[:, None])  # skip i itself
        valid = columns[None, :] < (class_sizes - 1)[:, None]
        table = np.where(valid, order[np.minimum(member, max(size - 1, 0))], size)
        return cls(class_sizes=class_sizes, positive_table=table)

    @property
    def batch_size(self) -> int:
        return int(self.class_sizes.shape[0])

    @property
    def positives(self) -> np.ndarray:
        """|P_i| for every sample."""
        return self.class_sizes - 1

    @property
    def negatives(self) -> np.ndarray:
        """Number of samples of other classes, for every sample."""
        return self.batch_size - self.class_sizes


def _device_labels(labels: Labels, device: torch.device) -> Tensor:
    labels = torch.as_tensor(labels, dtype=torch.int64)
    return labels.to(device, non_blocking=True)


def _device_index(indices: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64)).to(device, non_blocking=True)


def _empty_triplets(device: torch.device) -> Triplets:
    empty = torch.empty(0, dtype=torch.int64, device=device)
    return empty, empty.clone(), empty.clone()


def _same_class(labels: Tensor) -> Tensor:
    """[y_i == y_j], diagonal included: the entries that can never be negatives."""
    return labels[:, None] == labels[None, :]


def distance_weighted_weights(distances: Tensor, same_class: Tensor, *, dim: int, tau: float) -> Tensor:
    """Unnormalised sampling weights of §5.4.1 steps 1-4 (rows: anchors, columns: candidate negatives).

    ``same_class`` is [y_i == y_j] with the diagonal, i.e. positives and the anchor itself. Ignored entries
    are replaced by a harmless distance before the logarithms, so no inf/NaN from D' -> 2 is ever formed.
    With tau > 2 (margin > 0.8) admissible entries may reach D' = 2; the argument of the second logarithm is
    then floored at 1e-30 to stay finite. Positives and the anchor keep weight 0 even beyond tau, so they
    are never drawn as negatives.
    """
    clipped = distances.clamp(min=CUTOFF)
    ignored = same_class | (clipped >= tau)
    safe = clipped.masked_fill(ignored, 1.0)
    shrink = 1.0 - 0.25 * safe * safe
    if tau > 2.0:
        shrink = shrink.clamp(min=1e-30)
    log_weights = (2.0 - dim) * torch.log(safe) - ((dim - 3.0) / 2.0) * torch.log(shrink)
    log_weights = log_weights.masked_fill(ignored, 0.0)
    weights = torch.exp(log_weights - log_weights.amax(dim=1, keepdim=True)) + 1e-9
    return weights.masked_fill(clipped > tau, 1e-6).masked_fill(same_class, 0.0)


def _sample_without_replacement(weights: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` distinct columns per row, drawn one after another with probability proportional to the
    remaining weights (multinomial without replacement).

    Uses the exponential race (Efraimidis-Spirakis): keep the ``count`` largest log(U) / w. This is the
    algorithm torch.multinomial(replacement=False) runs internally, with uniforms from torch.rand (several
    times faster than its exponential_ on CPU) and without its validity checks, which synchronise the host
    in older PyTorch. Zero weights give -inf keys and are only taken if a row has fewer than ``count``
    non-zero weights, which the callers rule out. torch.rand can return exactly 0 (about once in 2**24
    draws), whose -inf key would tie with the zero weights; such draws are raised to the least positive float.
    """
    uniforms = torch.rand(weights.shape, generator=generator, device=weights.device)
    return (uniforms.clamp_(min=torch.finfo(uniforms.dtype).tiny).log_() / weights).topk(count, dim=1).indices


def distance_weighted_q(stats: LabelStats) -> int:
    """Negatives per anchor (§5.4.1 step 5): max(1, floor(mean |P_i| + 0.5)), capped by B - largest class."""
    q = max(1, int(np.floor(stats.positives.mean() + 0.5)))
    return min(q, stats.batch_size - int(stats.class_sizes.max()))


def _draw_positives(
    stats: LabelStats, anchors: np.ndarray, q: int, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """(B, q) positives per row, ascending: all of P_i if |P_i| = q, a uniform subset if |P_i| > q, and q
    uniform draws with replacement if |P_i| < q. The branches needed are picked from host-side counts,
    so the common case (every |P_i| = q, e.g. S = 2) costs no random draw and no device sort."""
    table = _device_index(stats.positive_table, device)
    counts = stats.positives[anchors]
    if (counts == q).all():
        return table[:, :q]
    row_counts = _device_index(stats.positives, device)[:, None]
    columns = torch.arange(table.shape[1], device=device)
    chosen = table[:, :q]
    if (counts > q).any():
        keys = torch.rand(table.shape, generator=generator, device=device).masked_fill(columns >= row_counts, 2.0)
        picked = keys.topk(q, dim=1, largest=False).indices.sort(dim=1).values
        chosen = table.gather(1, picked)
    if (counts < q).any():
        draws = (torch.rand((table.shape[0], q), generator=generator, device=device) * row_counts).long()
        draws = torch.minimum(draws, (row_counts - 1).clamp(min=0)).sort(dim=1).values
        chosen = torch.where(row_counts < q, table.gather(1, draws), chosen)
    return chosen


class DistanceWeightedMiner:
    """Distance-weighted sampling (Wu et al. 2017) exactly as §5.4.1; B*q triplets when all classes have S."""

    skips_single_class_batches = True

    def __init__(self, margin: float = 0.2) -> None:
        self.tau = BETA0 + margin

    def __call__(self, embeddings: Tensor, labels: Labels, generator: torch.Generator | None = None) -> Triplets:
        device = embeddings.device
        stats = LabelStats.from_labels(labels)
        q = distance_weighted_q(stats)
        anchors = np.flatnonzero(stats.positives >= 1)
        if q < 1 or anchors.size == 0:
            return _empty_triplets(device)
        with torch.no_grad():
            same_class = _same_class(_device_labels(labels, device))
            distances = miner_distance_matrix(embeddings.detach().float())
            weights = distance_weighted_weights(distances, same_class, dim=embeddings.shape[1], tau=self.tau)
            negatives = _sample_without_replacement(weights, q, generator)
            if q > 1:
                negatives = negatives.sort(dim=1).values
            positives = _draw_positives(stats, anchors, q, device, generator)
            if anchors.size < stats.batch_size:
                rows = _device_index(anchors, device)
                positives, negatives = positives[rows], negatives[rows]
            anchor_ids = _device_index(np.repeat(anchors, q), device)
            return anchor_ids, positives.reshape(-1), negatives.reshape(-1)


class EasyPeasyMiner:
    """§5.4.2: the closest non-positives at distance >= 0.5, paired by position with the positives.

    Ordering by D + 1e6 * penalty is implemented as the same lexicographic order (penalty first, then D)
    with an offset of max(D) + 1 instead of 1e6, which float32 would round to steps of 0.06.
    """

    skips_single_class_batches = False

    def __call__(self, embeddings: Tensor, labels: Labels, generator: torch.Generator | None = None) -> Triplets:
        device = embeddings.device
        stats = LabelStats.from_labels(labels)
        size = stats.batch_size
        q = max(1, int(stats.positives.sum()) // size)
        kept = np.minimum(stats.positives, q)
        if kept.sum() == 0:
            return _empty_triplets(device)
        rows = np.repeat(np.arange(size), kept)
        ranks = np.arange(rows.size) - np.repeat(np.cumsum(kept) - kept, kept)
        with torch.no_grad():
            same_class = _same_class(_device_labels(labels, device))
            distances = miner_distance_matrix(embeddings.detach().float())
            penalised = same_class | (distances < CUTOFF)
            cost = distances + penalised * (distances.amax() + 1.0)
            negatives = cost.topk(q, dim=1, largest=False).indices.sort(dim=1).values
            anchor_ids = _device_index(rows, device)
            positives = _device_index(stats.positive_table[rows, ranks], device)
            return anchor_ids, positives, negatives[anchor_ids, _device_index(ranks, device)]


class FlexibleTripletMiner:
    """§5.4.3: one triplet per anchor that has a positive and a negative.

    positive_rule: "H" hardest (largest D), "E" easiest (smallest D), "R" uniform random.
    negative_rule: "H" hardest (smallest D), "SH" uniform among D_ap < D_an < D_ap + margin, else hardest.
    """

    skips_single_class_batches = True

    def __init__(self, positive_rule: str, negative_rule: str, margin: float = 0.2) -> None:
        if positive_rule not in ("H", "E", "R") or negative_rule not in ("H", "SH"):
            raise ValueError(f"unknown miner rules P={positive_rule!r} N={negative_rule!r}")
        self.positive_rule = positive_rule
        self.negative_rule = negative_rule
        self.margin = margin

    def __call__(self, embeddings: Tensor, labels: Labels, generator: torch.Generator | None = None) -> Triplets:
        device = embeddings.device
        stats = LabelStats.from_labels(labels)
        anchors = np.flatnonzero((stats.positives >= 1) & (stats.negatives >= 1))
        if anchors.size == 0:
            return _empty_triplets(device)
        with torch.no_grad():
            device_labels = _device_labels(labels, device)
            positives = positive_mask(device_labels)
            negatives = ~_same_class(device_labels)
            distances = miner_distance_matrix(embeddings.detach().float())
            chosen_positive = self._positive(distances, positives, generator)
            chosen_negative = self._negative(distances, negatives, chosen_positive, generator)
            rows = _device_index(anchors, device)
            return rows, chosen_positive[rows], chosen_negative[rows]

    def _positive(self, distances: Tensor, positives: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.positive_rule == "H":
            return torch.where(positives, distances, -torch.inf).argmax(dim=1)
        if self.positive_rule == "E":
            return torch.where(positives, distances, torch.inf).argmin(dim=1)
        keys = torch.rand(distances.shape, generator=generator, device=distances.device)
        return torch.where(positives, keys, -1.0).argmax(dim=1)

    def _negative(
        self, distances: Tensor, negatives: Tensor, chosen_positive: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        hardest = torch.where(negatives, distances, torch.inf).argmin(dim=1)
        if self.negative_rule == "H":
            return hardest
        anchor_positive = distances.gather(1, chosen_positive[:, None])
        semihard = negatives & (distances > anchor_positive) & (distances < anchor_positive + self.margin)
        keys = torch.rand(distances.shape, generator=generator, device=distances.device)
        random_semihard = torch.where(semihard, keys, -1.0).argmax(dim=1)
        return torch.where(semihard.any(dim=1), random_semihard, hardest)


MINER_NAMES = ("distanceweighted", "easypeasy", "HPHN", "EPHN", "EPSHN", "HPSHN", "RPSHN", "RPHN")


def build_miner(name: str, *, margin: float) -> Miner:
    """The miner of ``--sampler NAME``; flexible names read <positive rule>P<negative rule>N."""
    if name == "distanceweighted":
        return DistanceWeightedMiner(margin=margin)
    if name == "easypeasy":
        return EasyPeasyMiner()
    if name in MINER_NAMES:
        positive_rule, negative_rule = name[:-1].split("P", 1)
        return FlexibleTripletMiner(positive_rule, negative_rule, margin=margin)
    raise ConfigError(f"--sampler {name!r} is not supported; choose one of: {', '.join(MINER_NAMES)}.")
