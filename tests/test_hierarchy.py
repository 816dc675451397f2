import pytest

from metriclearning.hierarchy import (
    backbone_frozen,
    clusters_at_epoch,
    initial_k,
    is_recluster_epoch,
    splits_at_epoch,
    stop_recluster_due,
)


def _schedule(epochs, **kwargs):
    return [clusters_at_epoch(e, **kwargs) for e in epochs]


def test_method_example_k_final_6():
    # METHOD.md §3.2: epochs 0-1 K=1, 2-3 K=2, 4-5 K=4, from 6 on K=6.
    got = _schedule(range(12), k_start=1, k_final=6, mod_epoch=2, method="top_bot")
    assert got == [1, 1, 2, 2, 4, 4, 6, 6, 6, 6, 6, 6]


def test_init_clusters_2():
    k_start = initial_k(6, "top_bot", 2)
    assert k_start == 2
    got = _schedule(range(8), k_start=k_start, k_final=6, mod_epoch=2, method="top_bot")
    assert got == [2, 2, 4, 4, 6, 6, 6, 6]


def test_sop_schedule_and_huge_epochs():
    kwargs = dict(k_start=1, k_final=32, mod_epoch=2, method="top_bot")
    assert _schedule([0, 1, 2, 3, 4, 6, 8, 9, 10, 79, 179], **kwargs) == [1, 1, 2, 2, 4, 8, 16, 16, 32, 32, 32]
    assert clusters_at_epoch(10**9, **kwargs) == 32


def test_initial_epoch_has_k_start():
    assert clusters_at_epoch(-1, k_start=2, k_final=8, mod_epoch=3, method="top_bot") == 2


@pytest.mark.parametrize("method", ["none", "bot_top"])
def test_flat_methods_use_k_final(method):
    assert initial_k(5, method, 2) == 5
    assert _schedule(range(-1, 6), k_start=5, k_final=5, mod_epoch=1, method=method) == [5] * 7


def test_initial_k_capped_and_single_cluster():
    assert initial_k(1, "top_bot", 2) == 1
    assert _schedule(range(6), k_start=1, k_final=1, mod_epoch=1, method="top_bot") == [1] * 6


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="top_bot"):
        initial_k(4, "bottom_up", 1)


def test_is_recluster_epoch():
    assert [is_recluster_epoch(e, 2, True) for e in range(-1, 6)] == [False, True, False, True, False, True, False]
    assert not any(is_recluster_epoch(e, 2, False) for e in range(6))
    assert [is_recluster_epoch(e, 3, True) for e in range(7)] == [True, False, False, True, False, False, True]


def test_splits_only_top_bot_after_epoch_0_below_k_final():
    assert not splits_at_epoch(0, 1, 4, "top_bot")
    assert splits_at_epoch(2, 1, 4, "top_bot")
    assert splits_at_epoch(4, 2, 3, "top_bot")
    assert not splits_at_epoch(6, 4, 4, "top_bot")
    assert not splits_at_epoch(2, 4, 8, "none")


def test_stop_recluster_condition():
    assert stop_recluster_due(7, k=4, k_final=4, method="top_bot", mod_epoch_freeze=1)
    assert not stop_recluster_due(7, k=2, k_final=4, method="top_bot", mod_epoch_freeze=1)
    assert not stop_recluster_due(0, k=4, k_final=4, method="none", mod_epoch_freeze=1)
    assert stop_recluster_due(1, k=4, k_final=4, method="none", mod_epoch_freeze=1)


def test_backbone_frozen_on_first_f_epochs_of_each_period():
    got = [backbone_frozen(e, mod_epoch=3, mod_epoch_freeze=2, active=True) for e in range(7)]
    assert got == [True, True, False, True, True, False, True]
    assert not any(backbone_frozen(e, mod_epoch=2, mod_epoch_freeze=0, active=True) for e in range(4))
    assert not any(backbone_frozen(e, mod_epoch=2, mod_epoch_freeze=1, active=False) for e in range(4))
