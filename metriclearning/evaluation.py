"""One evaluator for every retrieval protocol (METHOD.md §8): neighbours once, then every metric from them.

The k of the single neighbour search is the largest any requested metric needs: the largest reported R@k and
the largest R of MAP@R / mARP (the biggest class in the gallery). Neighbour labels are gathered as one
(Q, k) array; nothing is N x N and nothing is a Python list per query.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lib.knn import knn_search
from lib.recall_ks import RECALL_KS
from metriclearning.metrics import map_at_r, nmi, recall_at_k

VID_LISTS = ("small", "medium", "large")  # METHOD.md §7.6; "large" is reported without a prefix


def evaluate_retrieval(
    embeddings: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    *,
    recall_ks: Sequence[int],
    with_nmi: bool,
    nmi_runs: int = 1,
    query_mask: np.ndarray | None = None,
    gallery_mask: np.ndarray | None = None,
    backend: str = "auto",
    device=None,
) -> dict:
    """R@k (only k <= gallery size), NMI and NMI_std (None unless ``with_nmi``), MAP@R, mARP, query counts, kNN method.

    Without masks every point queries all the others (self-retrieval, own index excluded). With both masks
    the query points search the gallery points (In-Shop); the two sets must be disjoint. NMI clusters all
    points in self-retrieval, query and gallery points together otherwise.
    """
    codes = _label_codes(labels)
    n_points = len(codes)
    if embeddings.shape[0] != n_points or len(embeddings.shape) != 2:
        raise ValueError(f"need embeddings (N, D) for {n_points} labels, got shape {tuple(embeddings.shape)}")
    self_retrieval = query_mask is None and gallery_mask is None
    if self_retrieval:
        query_codes = gallery_codes = codes
        queries = gallery = embeddings
        gallery_size = n_points - 1
    else:
        query_mask, gallery_mask = _check_masks(query_mask, gallery_mask, n_points)
        query_codes, gallery_codes = codes[query_mask], codes[gallery_mask]
        queries, gallery = embeddings[_index(query_mask, embeddings)], embeddings[_index(gallery_mask, embeddings)]
        gallery_size = len(gallery_codes)
    if gallery_size < 1:
        raise ValueError("retrieval needs at least one gallery item per query")

    if any(k < 1 for k in recall_ks):
        raise ValueError(f"recall_ks must be positive counts, got {tuple(recall_ks)}")
    ks = [k for k in recall_ks if k <= gallery_size]
    relevant = np.bincount(gallery_codes, minlength=codes.max() + 1)[query_codes] - int(self_retrieval)
    r_max = int(relevant.max())
    k_search = max(1, *ks, r_max)
    _, neighbours, method = knn_search(
        queries,
        gallery,
        k_search,
        backend=backend,
        device=device,
        exclude_self=self_retrieval,
        exact_cuts=sorted({*ks, *range(1, r_max + 1)}),
    )
    neighbour_codes = gallery_codes[neighbours]

    metrics: dict = dict(recall_at_k(neighbour_codes, query_codes, ks))
    metrics["NMI"] = metrics["NMI_std"] = None
    if with_nmi:
        points = slice(None) if self_retrieval else query_mask | gallery_mask
        features = _numpy_float32(embeddings)[points]
        metrics["NMI"], metrics["NMI_std"] = nmi(
            features, codes[points], n_runs=nmi_runs, backend=backend, device=device
        )
    map_r, marp, n_queries, n_queries_r0 = map_at_r(neighbour_codes, query_codes, relevant)
    metrics.update({"MAP@R": map_r, "mARP": marp, "n_queries": n_queries, "n_queries_R0": n_queries_r0})
    metrics["knn_method"] = method
    return metrics


def evaluate_vid(
    lists: Mapping[str, tuple[np.ndarray | Tensor, np.ndarray | Tensor]],
    *,
    recall_ks: Sequence[int] = RECALL_KS["vid"],
    with_nmi: bool,
    nmi_runs: int = 1,
    backend: str = "auto",
    device=None,
) -> dict:
    """VehicleID: each test list (name -> (embeddings, labels)) retrieves within itself.

    The "large" list's metrics are unprefixed; the others get "small/" and "medium/" (METHOD.md §8.3).
    """
    unknown = set(lists) - set(VID_LISTS)
    if unknown or "large" not in lists:
        raise ValueError(f"VehicleID lists must include 'large' and be among {VID_LISTS}, got {sorted(lists)}")
    metrics: dict = {}
    for name in ("large", "small", "medium"):
        if name in lists:
            embeddings, labels = lists[name]
            result = evaluate_retrieval(
                embeddings,
                labels,
                recall_ks=recall_ks,
                with_nmi=with_nmi,
                nmi_runs=nmi_runs,
                backend=backend,
                device=device,
            )
            prefix = "" if name == "large" else f"{name}/"
            metrics.update({f"{prefix}{key}": value for key, value in result.items()})
    return metrics


def _label_codes(labels: np.ndarray | Tensor) -> np.ndarray:
    """Labels of any dtype as int64 codes 0..C-1, so that class sizes are one bincount."""
    values = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {values.shape}")
    return np.unique(values, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _check_masks(query_mask, gallery_mask, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    if query_mask is None or gallery_mask is None:
        raise ValueError("query/gallery retrieval needs both query_mask and gallery_mask")
    masks = [m.cpu().numpy() if isinstance(m, Tensor) else np.asarray(m) for m in (query_mask, gallery_mask)]
    for mask in masks:
        if mask.dtype != np.bool_ or mask.shape != (n_points,):
            raise ValueError(f"masks must be boolean arrays of shape ({n_points},), got {mask.dtype} {mask.shape}")
    if not masks[0].any() or not masks[1].any():
        raise ValueError("query_mask and gallery_mask must each select at least one point")
    if (masks[0] & masks[1]).any():
        raise ValueError("a point is both a query and a gallery item; query and gallery sets must be disjoint")
    return masks[0], masks[1]


def _index(mask: np.ndarray, embeddings: np.ndarray | Tensor):
    return torch.from_numpy(mask).to(embeddings.device) if isinstance(embeddings, Tensor) else mask


def _numpy_float32(embeddings: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(embeddings, Tensor):
        return embeddings.detach().float().cpu().numpy()
    return np.asarray(embeddings, dtype=np.float32)
