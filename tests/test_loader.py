import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, get_worker_info

from dataset.cluster_sampler import ClusterBatchPlanner, PlannedBatch
from dataset.loader import make_eval_loader, make_train_loader
from lib.seeding import derive_seed


class TinyDataset(Dataset):
    """Image = (index, one uniform draw of the augmentation generator, worker id)."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item):
        index, aug_seed = item if isinstance(item, tuple) else (item, None)
        noise = 0.0 if aug_seed is None else augment(aug_seed)
        info = get_worker_info()
        image = torch.tensor([index, noise, -1 if info is None else info.id], dtype=torch.float64)
        return image, int(self.labels[index]), index


def augment(aug_seed: int) -> float:
    return torch.rand(1, generator=torch.Generator().manual_seed(aug_seed), dtype=torch.float64).item()


def make_plan(n_clusters=3, per_cluster=12, *, num_replicas=1, seed=0):
    learners = np.repeat(np.arange(n_clusters), per_cluster)
    labels = learners * 3 + np.arange(len(learners)) % 3
    plan = ClusterBatchPlanner(
        learners,
        labels,
        sampler_name="adaptbalanced",
        batch_size=4,
        samples_per_class=2,
        num_replicas=num_replicas,
        small_class_action="sample_other",
        seed=seed,
        recluster_index=0,
    ).plan_epoch(0)
    return TinyDataset(labels), labels, plan


def load(dataset, plan, **kwargs):
    kwargs.setdefault("seed", 5)
    kwargs.setdefault("epoch", 2)
    kwargs.setdefault("num_workers", 0)
    return list(make_train_loader(dataset, plan, **kwargs))


def test_batches_come_in_plan_order_with_learner_ids_labels_and_aug_seeds():
    dataset, labels, plan = make_plan(num_replicas=2)
    batches = load(dataset, plan)
    assert len(batches) == len(plan) == 3 * 3
    for b, (batch, planned) in enumerate(zip(batches, plan, strict=True)):
        assert batch.batch_index == b and batch.learner_id == planned.learner_id
        assert batch.indices.dtype == torch.int64 and batch.labels.dtype == torch.int64
        assert batch.indices.tolist() == planned.indices.tolist()
        assert batch.labels.tolist() == labels[planned.indices].tolist()
        assert batch.images[:, 0].tolist() == planned.indices.tolist()
        expected = [augment(derive_seed(5, "aug", 2, b, j)) for j in range(len(planned.indices))]
        assert batch.images[:, 1].tolist() == expected
        assert batch.images[0, 1] != batch.images[2, 1]  # replicas of one image are augmented independently


def test_same_index_and_seed_give_the_same_tensor_and_epochs_differ():
    dataset, _, plan = make_plan()
    first, again, later = load(dataset, plan), load(dataset, plan), load(dataset, plan, epoch=3)
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0].images, later[0].images)


def test_start_batch_skips_the_batches_already_trained():
    dataset, _, plan = make_plan()
    full, tail = load(dataset, plan), load(dataset, plan, start_batch=5)
    assert [b.batch_index for b in tail] == list(range(5, len(plan)))
    assert all(torch.equal(a.images, b.images) for a, b in zip(full[5:], tail, strict=True))
    assert load(dataset, plan, start_batch=len(plan)) == []
    with pytest.raises(ValueError, match="start batch"):
        load(dataset, plan, start_batch=len(plan) + 1)


def test_ranks_take_contiguous_shares_of_the_global_batch():
    dataset, _, plan = make_plan()
    whole = load(dataset, plan)
    shares = [load(dataset, plan, rank=r, world_size=2) for r in range(2)]
    for b, batch in enumerate(whole):
        parts = [shares[r][b] for r in range(2)]
        assert [len(p.indices) for p in parts] == [2, 2]
        assert all(p.learner_id == batch.learner_id for p in parts)
        assert torch.equal(torch.cat([p.images for p in parts]), batch.images)
        assert torch.equal(torch.cat([p.labels for p in parts]), batch.labels)


def test_64_clusters_load_through_one_loader_with_two_workers():
    dataset, _, plan = make_plan(n_clusters=64, per_cluster=8)
    assert len(plan) == 64 * 2
    serial = load(dataset, plan)
    parallel = load(dataset, plan, num_workers=2)
    worker_ids = set(torch.cat([b.images[:, 2] for b in parallel]).tolist())
    assert worker_ids <= {0, 1} and worker_ids
    assert [b.learner_id for b in parallel] == [p.learner_id for p in plan]
    assert all(torch.equal(a.images[:, :2], b.images[:, :2]) for a, b in zip(serial, parallel, strict=True))


def test_train_loader_leaves_the_global_torch_rng_alone():
    dataset, _, plan = make_plan()
    before = torch.get_rng_state()
    load(dataset, plan)
    assert torch.equal(torch.get_rng_state(), before)


def test_short_batches_cannot_be_split_over_more_ranks_than_images():
    dataset = TinyDataset(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="world_size"):
        load(dataset, [PlannedBatch(0, np.array([0]))], rank=0, world_size=2)


def test_eval_loader_keeps_index_order():
    dataset = TinyDataset(np.arange(10) % 4)
    batches = list(make_eval_loader(dataset, batch_size=4, num_workers=0))
    assert [len(images) for images, _, _ in batches] == [4, 4, 2]
    assert torch.cat([indices for _, _, indices in batches]).tolist() == list(range(10))
    assert torch.cat([labels for _, labels, _ in batches]).tolist() == (np.arange(10) % 4).tolist()
