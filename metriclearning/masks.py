"""Learner masks (§4.4): one vector of length D per cluster, applied to the embedding of its batches.

Each mask is its own ``nn.Parameter`` so a batch of learner k sends gradients to mask k only, and so that
a split can hand children fresh tensors (fresh optimizer state) while unsplit masks keep theirs.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lib.errors import ConfigError

MASK_INITS = ("ones", "normal")
SUM_NORMALIZATIONS = (None, "l1")


class LearnerMasks(nn.Module):
    """The current list of K masks; K follows the clusters through splits and checkpoint loads."""

    def __init__(
        self,
        dim: int,
        n_masks: int,
        *,
        init: str = "ones",
        fixed: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if init not in MASK_INITS:
            raise ConfigError(f"--masking-init {init} is unknown; choose one of {', '.join(MASK_INITS)}.")
        if fixed and init != "ones":
            raise ConfigError("--fixed-mask 1 builds binary block masks: use it with --masking-init ones.")
        if n_masks < 1 or dim < 1:
            raise ValueError(f"need at least one mask of length >= 1, got {n_masks} masks of length {dim}")
        self.fixed = fixed
        self._frozen = fixed
        base = torch.ones(dim) if init == "ones" else torch.randn(dim, generator=generator) * 0.7 + 0.9
        self.params = nn.ParameterList([self._new_param(base)])
        # A starting K > 1 is reached as if every cluster had split level by level (partial last level).
        while len(self) < n_masks:
            n_split = min(len(self), n_masks - len(self))
            self.split([i < n_split for i in range(len(self))])

    def __len__(self) -> int:
        return len(self.params)

    @property
    def trainable(self) -> bool:
        """Whether the masks take optimizer steps (not fixed, not frozen by the conquer stage)."""
        return not self._frozen

    def _new_param(self, values: Tensor) -> nn.Parameter:
        return nn.Parameter(values.detach().clone(), requires_grad=not self._frozen)

    @staticmethod
    def _halves(mask: Tensor) -> tuple[Tensor, Tensor]:
        """Fixed-mask split: the first floor(n/2) ones in dimension order, and the remaining ones."""
        on = mask > 0
        first = on & (torch.cumsum(on.long(), 0) <= on.sum() // 2)
        return first.to(mask.dtype), (on & ~first).to(mask.dtype)

    def split(self, split_flags: Sequence[bool]) -> list[int]:
        """Rebuild the list in new-cluster-id order; returns the parent index of every new mask.

        An unsplit mask keeps its Parameter object; each split parent is replaced by two new Parameters
        (copies for learnable masks, halved blocks for fixed masks).
        """
        if len(split_flags) != len(self):
            raise ValueError(f"{len(split_flags)} split flags for {len(self)} masks")
        new_masks: list[nn.Parameter] = []
        parents: list[int] = []
        for index, (mask, flag) in enumerate(zip(self.params, split_flags, strict=True)):
            if not flag:
                new_masks.append(mask)
                parents.append(index)
                continue
            children = self._halves(mask.detach()) if self.fixed else (mask, mask)
            new_masks.extend(self._new_param(child) for child in children)
            parents.extend((index, index))
        self.params = nn.ParameterList(new_masks)
        return parents

    def stacked(self) -> Tensor:
        return torch.stack(list(self.params))

    def apply_mask(self, z: Tensor, learner_id: int, *, relu: bool) -> Tensor:
        mask = self.params[learner_id]
        return z * (torch.relu(mask) if relu else mask)

    def summed(self, *, relu: bool, normalize: str | None) -> Tensor:
        """Σ_k h(m_k), the weighting of the unmasked embedding with --masks-sum-for-full-emb (§4.3)."""
        if normalize not in SUM_NORMALIZATIONS:
            raise ConfigError(f"--masks-normalize-before-sum {normalize} is unknown; only l1 is supported.")
        terms = self.stacked()
        if relu:
            terms = torch.relu(terms)
        if normalize == "l1":
            terms = terms / terms.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
        return terms.sum(dim=0)

    def freeze(self) -> None:
        """Conquer stage: no mask (current or created by later splits) requires gradients."""
        self._frozen = True
        for mask in self.params:
            mask.requires_grad_(False)

    @torch.no_grad()
    def summary(self) -> list[dict]:
        """Per mask: effective active dimensions ||relu(m)||_1 / max(relu(m)) (0 for a dead mask), min/mean/max."""
        masks = self.stacked().float()
        positive = torch.relu(masks)
        peak = positive.amax(dim=1)
        active = torch.where(peak > 0, positive.sum(dim=1) / peak.clamp_min(1e-12), torch.zeros_like(peak))
        stats = torch.stack([active, masks.amin(1), masks.mean(1), masks.amax(1)], dim=1).tolist()
        return [
            {"mask": k, "active_dims": a, "min": lo, "mean": mean, "max": hi}
            for k, (a, lo, mean, hi) in enumerate(stats)
        ]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        """A checkpoint decides K: resize the list to its mask count before the default (strict) copy."""
        head = prefix + "params."
        ids = [key[len(head) :] for key in state_dict if key.startswith(head)]
        if ids and all(i.isdigit() for i in ids) and len(ids) != len(self):
            template = torch.zeros_like(self.params[0])
            self.params = nn.ParameterList([self._new_param(template) for _ in ids])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
