"""The divide-and-conquer schedule: how many clusters each epoch has, and when to recluster, split or freeze.

Pure functions of the epoch and the flags (METHOD.md §3.2, §3.3), so that a resumed run recomputes the same
schedule from the checkpointed epoch instead of carrying counters around.
"""

HIERARCHY_METHODS = ("top_bot", "none", "bot_top")


def _check_method(method: str) -> None:
    if method not in HIERARCHY_METHODS:
        raise ValueError(f"unknown hierarchy method {method!r}; choose one of {', '.join(HIERARCHY_METHODS)}")


def initial_k(k_final: int, method: str, init_clusters: int) -> int:
    """K before the first epoch: ``--init-clusters`` capped at K_final under ``top_bot``, else K_final."""
    _check_method(method)
    return min(init_clusters, k_final) if method == "top_bot" else k_final


def clusters_at_epoch(epoch: int, *, k_start: int, k_final: int, mod_epoch: int, method: str) -> int:
    """K during epoch ``epoch``: min(K_final, K0 * 2^floor(e/M)) under ``top_bot``; K_final otherwise.

    Epoch -1 (before training) has K0 clusters.
    """
    _check_method(method)
    if method != "top_bot":
        return k_final
    level = max(epoch, 0) // mod_epoch
    # Cap the exponent: past log2(K_final) doublings the minimum is K_final anyway.
    return min(k_final, k_start << min(level, k_final.bit_length()))


def is_recluster_epoch(epoch: int, mod_epoch: int, active: bool) -> bool:
    """Reclustering runs at the start of every epoch e >= 0 with e mod M = 0 while it is active."""
    return active and epoch >= 0 and epoch % mod_epoch == 0


def splits_at_epoch(epoch: int, k: int, k_final: int, method: str) -> bool:
    """Whether the recluster of ``epoch`` (with K = ``k`` clusters before it) ends with a split.

    Only ``top_bot`` splits, never at epoch 0 nor at the initial clustering, and only while K < K_final.
    """
    _check_method(method)
    return method == "top_bot" and epoch > 0 and k < k_final


def stop_recluster_due(epoch: int, *, k: int, k_final: int, method: str, mod_epoch_freeze: int) -> bool:
    """The ``--stop-recluster`` condition of §3.3 step 1: the final partition exists (``top_bot``) or the
    first freezing period is over (``none``/``bot_top``)."""
    _check_method(method)
    if method == "top_bot":
        return k == k_final
    return epoch >= mod_epoch_freeze


def backbone_frozen(epoch: int, *, mod_epoch: int, mod_epoch_freeze: int, active: bool) -> bool:
    """The backbone's LR is 0 on epochs with e mod M < F while reclustering is active (§3.3 step 3)."""
    return active and mod_epoch_freeze > 0 and epoch % mod_epoch < mod_epoch_freeze
