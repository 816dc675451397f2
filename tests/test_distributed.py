"""torchrun on the CPU (gloo): 2 processes x B/2 train exactly like 1 process x B, and train.py runs under torchrun.

The equality test calls the real training step (``experiment.epoch._train_step``) with the model wrapped by
``Trainer._wrap_model``, once in this process with the whole batch and once in two gloo processes that each
hold one half; ``--dropout 0`` makes the two equal up to reduction order (METHOD.md §11).
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dataset.base import Split
from dataset.loader import Batch, rank_share
from experiment.build import Embedder
from experiment.epoch import StepSetup, _DeviceSums, _train_step
from lib.checkpoint import load_checkpoint
from lib.dist import DistContext, init_distributed, shutdown
from lib.errors import ConfigError
from lib.seeding import torch_generator
from metriclearning.criteria import build_criterion
from metriclearning.model import EmbeddingModel
from metriclearning.optim import OptimSettings, build_optimizer
from tests.test_train_e2e import GLYPHS, _final_state, _wait_for_epoch, epochs_of, run_folders

ROOT = Path(__file__).resolve().parent.parent
SEED = 7
BATCH = 16  # 4 classes x S = 4
LEARNER = 1  # mask 0 is then unused by the forward but used by the regulariser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _first_step(dist: DistContext, device: torch.device) -> dict:
    """One training step on this rank's share of a fixed batch; returns the losses, gradients and new parameters."""
    import train

    model = EmbeddingModel(
        arch="resnet18",
        sz_embedding=16,
        dropout=0.0,
        nb_clusters_final=2,
        n_masks=2,
        masking_init="normal",  # distinct masks: the regulariser's gradient is not zero
        pretrained=False,
        generator=torch_generator(SEED, "model-init"),
    ).to(device)
    criterion = build_criterion(
        "MarginLoss",
        margin=0.2,
        sampler="distanceweighted",
        soft_loss=False,
        lr_beta=0.1,  # learnable class-specific beta: a criterion parameter outside DDP
        n_train_classes=4,
        alpha=1.0,
        lr_alpha=0.0,
    ).to(device)
    # No weight decay: g + wd * p can cancel to ~0 where g is large, and Adam's first step would amplify the noise.
    settings = OptimSettings(optimizer="Adam", base_lr=1e-3, weight_decay=0.0, mask_lr_mult=10.0)
    optimizer = build_optimizer(model, settings, criterion.loss_parameter_group())
    features = _sharded_features(model, dist, device)
    wrapped = train.Trainer._wrap_model(SimpleNamespace(dist=dist, device=device, model=model))
    setup = StepSetup(
        model=wrapped,
        masks=model.masks,
        criterion=criterion,
        optimizer=optimizer,
        scaler=None,
        device=device,
        amp_dtype=None,
        channels_last=False,
        masking_lambda=0.5,
        with_l1=True,
        seed=SEED,
        dist=dist,
    )
    images = torch.randn(BATCH, 3, 32, 32, generator=torch_generator(SEED, "test-images"))
    labels = np.repeat(np.arange(4, dtype=np.int64), 4)[np.random.default_rng(SEED).permutation(BATCH)]
    share = rank_share(BATCH, dist.rank, dist.world_size)
    batch = Batch(
        images=images[share],
        labels=torch.from_numpy(labels[share]),
        indices=torch.arange(BATCH)[share],
        learner_id=LEARNER,
        batch_index=3,
    )
    sums = _DeviceSums(device, 0.0, 0.0)
    wrapped.train()
    _train_step(batch, labels, setup, False, None, sums, 0)
    named = [*model.named_parameters(), *(("criterion." + n, p) for n, p in criterion.named_parameters())]
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {
        "loss_metric": float(sums.metric),
        "loss_mask": float(sums.mask),
        "grads": {name: None if p.grad is None else p.grad.detach().clone() for name, p in named},
        "params": {name: p.detach().clone() for name, p in named},
        "lrs": {name: lr_of[id(p)] for name, p in named},
        "features": features,
    }


def _sharded_features(model: EmbeddingModel, dist: DistContext, device: torch.device) -> dict[str, torch.Tensor]:
    """Evaluation embeddings and clustering features of 7 images: shards of 4 and 3 under two processes."""
    rng = np.random.default_rng(SEED)
    split = Split("test", [rng.integers(0, 256, (40, 36, 3), dtype=np.uint8) for _ in range(7)], np.zeros(7), ("a",))
    options = SimpleNamespace(
        sz_resize=32, sz_crop=32, eval_batch_size=2, num_workers=0, amp="off", channels_last=False
    )
    embed = Embedder(model, options, device, dist)
    return {mode: torch.from_numpy(embed(split, mode=mode)) for mode in ("embedding", "penultimate")}


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)  # two processes share the CPU cores
    dist, device = init_distributed(0)
    try:
        result = _first_step(dist, device)
    finally:
        shutdown(dist)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def test_two_gloo_processes_with_half_batches_equal_one_process_with_the_whole_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # children pick gloo on the CPU
    reference = _first_step(DistContext(), torch.device("cpu"))
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    grads = reference["grads"]
    assert reference["loss_metric"] > 0 and reference["loss_mask"] > 0
    assert all(grads[name] is not None for name in ("masks.params.0", "masks.params.1", "criterion.loss.beta"))
    assert grads["criterion.loss.beta"].abs().sum() > 0 and grads["masks.params.0"].abs().sum() > 0
    for rank, result in enumerate(ranks):
        assert result["loss_metric"] == pytest.approx(reference["loss_metric"], rel=1e-6), rank
        assert result["loss_mask"] == pytest.approx(reference["loss_mask"], rel=1e-6), rank
        assert result["grads"].keys() == grads.keys()
        for name, expected in grads.items():
            got = result["grads"][name]
            assert (got is None) == (expected is None), (rank, name)
            if expected is not None:
                # beta lives outside DDP: each rank must hold the full-batch gradient, not world_size times it
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"rank {rank} grad {name}")
        for name, expected in reference["params"].items():
            _assert_same_adam_step(result["params"][name], expected, grads[name], reference["lrs"][name], name)
        assert all(torch.equal(result["params"][n], ranks[0]["params"][n]) for n in grads)  # ranks agree exactly
        for mode, expected in reference["features"].items():
            assert result["features"][mode].shape == expected.shape == (7, 16 if mode == "embedding" else 512)
            torch.testing.assert_close(result["features"][mode], expected, rtol=1e-5, atol=1e-6, msg=mode)


def _assert_same_adam_step(got: torch.Tensor, expected: torch.Tensor, grad: torch.Tensor, lr: float, name: str):
    """Adam's first step is lr * g / (|g| + eps): where |g| is within reduction-order noise (~1e-7) of 0 its size
    is noise too, so such elements only need to stay within one step; all others must agree tightly."""
    steady = grad.abs() >= 1e-6
    torch.testing.assert_close(got[steady], expected[steady], rtol=1e-5, atol=1e-6, msg=f"param {name}")
    assert (got - expected).abs().max() <= 2 * lr, name


# ---------------------------------------------------------------- train.py under torchrun
TORCHRUN_ARGS = GLYPHS + ["--glyphs-classes", "8", "--nb-clusters", "2", "--mod-epoch", "1", "--dropout", "0",
                         "--batch-size", "16"]  # fmt: skip


def _torchrun(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    return subprocess.run(
        [*launcher, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_torchrun_trains_writes_one_run_folder_and_resumes(tmp_path):
    first = _torchrun(tmp_path, TORCHRUN_ARGS + ["--nb-epochs", "1"])
    assert first.returncode == 0, first.stderr[-4000:]
    [run] = run_folders(tmp_path)
    assert [r["epoch"] for r in epochs_of(run)] == [-1, 0]
    assert json.loads((run / "command.json").read_text())["world_size"] == 2
    assert first.stderr.count("finished: best") == 1  # only rank 0 logs progress to the console

    resumed = _torchrun(tmp_path, TORCHRUN_ARGS + ["--nb-epochs", "2"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert run_folders(tmp_path) == [run]  # extended in place, by rank 0 only
    records = epochs_of(run)
    assert [r["epoch"] for r in records] == [-1, 0, 1]
    assert [r["K"] for r in records] == [1, 1, 2]
    assert all(r["n_batches"] > 0 and r["n_skipped"] == 0 for r in records[1:])
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["last_epoch"] == 1
    assert sorted(p.name for p in (run / "recluster").iterdir()) == ["e-001.npz", "e0000.npz", "e0001.npz"]
    assert (run / "log.txt").read_text().count("resuming after epoch 0") == 1


def test_sigterm_under_torchrun_stops_every_rank_and_the_same_command_resumes_exactly(tmp_path):
    """The scheduler's SIGTERM reaches torchrun, which passes it to both ranks: they stop after the same step,
    rank 0 writes ``last`` (mid-epoch, unless the signal lands between two epochs) and status ``interrupted``,
    and the same command finishes the run with the records and weights of an uninterrupted one."""
    args = TORCHRUN_ARGS + ["--glyphs-classes", "24", "--nb-epochs", "3"]
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    reference.mkdir(), stopped.mkdir()
    assert _torchrun(reference, args).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    process = subprocess.Popen(
        [*launcher, str(ROOT / "train.py"), *args], cwd=stopped, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_epoch(stopped, 0, process)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    [run] = run_folders(stopped)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and "SIGTERM" in status["message"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= 0  # written whole, loadable
    assert not list(stopped.glob("log/*/*/checkpoints/*.tmp"))

    assert _torchrun(stopped, args).returncode == 0
    expected_records, expected_model = _final_state(reference)
    records, model = _final_state(stopped)
    assert records == expected_records
    for key in model:
        assert torch.equal(model[key], expected_model[key]), key
    assert "resuming" in (run / "log.txt").read_text()


def test_a_cuda_device_that_does_not_exist_is_one_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert init_distributed(1)[1] == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"--cuda-device 2 does not exist: .* 2 CUDA device\(s\), numbered 0 to 1"):
        init_distributed(2)
