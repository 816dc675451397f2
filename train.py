"""Train an embedding with divide-and-conquer deep metric learning (Sanakoyeu et al., TPAMI 2021).

Usage:
    python train.py --experiment margin_loss_resnet50 --preset quickstart        # CPU demo on built-in glyphs
    python train.py --experiment margin_loss_resnet50 --dataset=sop -i=NAME -seed=4 --nb-clusters=32 ...
    python train.py --preset sop -i NAME --dataset-dir DATA                      # the seed README's SOP recipe
    torchrun --nproc_per_node 4 train.py --preset sop -i NAME --dataset-dir DATA

The same command again resumes an unfinished run from its `last` checkpoint, or says that it is finished.
Every flag is documented in experiment/margin_loss_resnet50.py and METHOD.md.
"""

import contextlib
import datetime
import logging
import math
import os
import random
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from dataset.loader import make_train_loader
from experiment.build import AMP_DTYPES, Embedder, build_data, build_model, build_run_criterion, optim_settings
from experiment.checkpointing import (
    RunFlags,
    build_state,
    restore_rng_states,
    settle_run,
    write_epoch_checkpoints,
)
from experiment.config import Config, parse_config
from experiment.divide import ClusterState, recluster_step, save_recluster_record
from experiment.epoch import EpochProgress, StepSetup, train_one_epoch
from experiment.protocol import nmi_enabled, run_evaluation
from experiment.run_setup import RunPlan, plan_run
from lib.checkpoint import load_checkpoint, save_checkpoint
from lib.dist import DistContext, any_rank, barrier, broadcast_object, init_distributed, shutdown
from lib.env import environment_report
from lib.errors import CheckpointError, ConfigError, UserFacingError
from lib.faiss_backend import describe_faiss
from lib.preemption import PreemptionFlag
from lib.runs import STATUS_FILE, RunFolder, epoch_tag, move_aside, setup_logger, stop_on_write_failure
from lib.wandb_sink import WandbSink
from metriclearning.clustering import SeedStream
from metriclearning.hierarchy import backbone_frozen, is_recluster_epoch, splits_at_epoch, stop_recluster_due
from metriclearning.optim import build_optimizer, remove_mask_group, scheduled_lr, set_epoch_lrs

TRAINING_FIELDS = (
    "lr",
    "backbone_frozen",
    "full_embedding",
    "loss_metric",
    "loss_mask",
    "n_batches",
    "n_skipped",
    "train_s",
)


class Trainer:
    """One run: holds the parts built from the config and walks through the epochs of METHOD.md §3."""

    def __init__(self, config: Config, plan: RunPlan, argv: list[str], dist: DistContext, device: torch.device):
        self.config, self.dist, self.device = config, dist, device
        self.wandb: WandbSink | None = None  # --wandb-enabled, main process only
        self.run: RunFolder = plan.run
        self.resume_state, self.resume_source = plan.resume_state, plan.resume_source
        self.log = setup_logger(None, verbose=config.verbose)  # the log file joins once the folder exists
        if not dist.is_main:
            self.log.setLevel(logging.WARNING)  # under torchrun the console shows rank 0's progress once
        self.preemption = PreemptionFlag().install()
        self._seed_everything()
        self.data = build_data(config)
        self.train_labels = self.data.train.labels
        n_masks = self.resume_state["clusters"]["k"] if self.resume_state else config.k_start
        self.model = build_model(config, n_masks=n_masks, device=device)
        self.criterion = build_run_criterion(config, self.data.train.n_classes, device)
        self.settings = optim_settings(config)
        self.optimizer = build_optimizer(self.model, self.settings, self.criterion.loss_parameter_group())
        self.scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
        self.embed = Embedder(self.model, config, device, dist)
        self.train_model = self._wrap_model()
        self.clusters = ClusterState(k=config.k_start, seeds=SeedStream(config.clustering_random_state))
        self.flags = RunFlags(recluster_active=config.nb_clusters > 1, stop_recluster_armed=config.stop_recluster)
        self.selection_key = "val/R@1" if self.data.val is not None else "R@1"
        if dist.is_main:  # only now, with data and model built, so a typo in a flag leaves no folder behind
            moved = self.run.create(fresh=plan.fresh, replace_existing=plan.replace_existing)
            self.log = setup_logger(self.run.path / "log.txt", verbose=config.verbose)
            if moved is not None:
                self.log.info(f"--overwrite: moved the previous run folder to {moved}")
            if self.run.lock_unsupported:
                self.log.warning(f"warning: {self.run.path} is on a file system without locks; run one copy at a time")
            self._record_start(argv)
            if config.verbose:  # the summary reads the masks from the device: only when it is shown
                self.log.debug(f"masks created: {self.model.masks.summary()}")
        barrier(dist)

    # ------------------------------------------------------------------ start-up
    def _seed_everything(self) -> None:
        seed = self.config.random_seed
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        torch.backends.cudnn.benchmark = False

    def _record_start(self, argv: list[str]) -> None:
        config = self.config
        derived = {
            "run_name": config.run_name(),
            "config_hash": config.hash(),
            "k_final": config.nb_clusters,
            "n_train_classes": self.data.train.n_classes,
            "n_train_images": len(self.data.train),
            "splits": {
                name: {"images": len(s), "classes": s.n_classes} for name, s in self.data.dataset.splits.items()
            },
            "val_classes": list(self.data.val.class_names) if self.data.val is not None else None,
            "base_lrs": {group["name"]: group["base_lr"] for group in self.optimizer.param_groups},
            "dataset_info": self.data.dataset.info,
        }
        self.run.write_json("config.json", {**config.to_dict(), "derived": derived})
        self.run.write_json(
            "command.json",
            {
                "argv": argv,
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "world_size": self.dist.world_size,
            },
        )
        self.run.write_json("env.json", environment_report())
        self.run.set_status("running", nb_epochs=config.nb_epochs, started=True)
        self.log.info(f"run folder: {self.run.path}")
        for warning in (*config.warnings, *self.data.warnings):
            self.log.warning(f"warning: {warning}")
        self.log.info(f"device: {self.device}; {describe_faiss()}; backend {config.backend}")
        self.log.info(f"train: {len(self.data.train)} images of {self.data.train.n_classes} classes")

    # ------------------------------------------------------------------ the story of a run
    def fit(self) -> None:
        if self.config.wandb_enabled and self.dist.is_main:  # here, so that a failure to start is in status.json
            self.wandb = WandbSink(self.run.path, self.config.to_dict())
        if self.resume_state is None:
            self._initial_evaluation_and_clustering()
            start_epoch, progress = 0, None
        else:
            start_epoch, progress = self._restore(self.resume_state)
            self.resume_state = None
        for epoch in range(start_epoch, self.config.nb_epochs):
            # Checked before each epoch, so that a signal during start-up, the initial evaluation or an epoch's
            # evaluation stops before the next recluster; one after the last epoch finishes the run anyway.
            if self._stop_requested():
                at = f"epoch {epoch}, batch {progress.next_batch}" if progress is not None else None
                self._stop_interrupted(epoch - 1, at=at)
                return
            record = self._run_epoch(epoch, progress)
            progress = None
            if record is None:  # preempted mid-epoch: `last` is written, exit 0
                return
        if self.dist.is_main:
            self.run.set_status("finished", last_epoch=self.config.nb_epochs - 1)
            self.log.info(f"finished: {self._best_summary()}; total time {self._total_time()}")

    def _initial_evaluation_and_clustering(self) -> None:
        """Epoch -1: evaluate the untrained model and cluster with the starting K (METHOD.md §3.1 steps 7-8)."""
        started = time.perf_counter()
        metrics = self._evaluate()
        eval_s = time.perf_counter() - started
        self.log.info(f"untrained model: {self._format_metrics(metrics)}")
        self._recluster(-1)
        record = {
            "epoch": -1,
            "K": self.clusters.k,
            **dict.fromkeys(TRAINING_FIELDS),
            "eval_s": eval_s,
            "best_epoch": None,
            "best_value": None,
            **metrics,
        }
        self._save_epoch_end(-1, record, improved=False)

    def _run_epoch(self, epoch: int, progress: EpochProgress | None) -> dict | None:
        config, flags = self.config, self.flags
        recluster_s = 0.0
        if progress is None:
            recluster_now = False
            if flags.stop_recluster_armed and stop_recluster_due(
                epoch,
                k=self.clusters.k,
                k_final=config.nb_clusters,
                method=config.hierarchy_method,
                mod_epoch_freeze=config.mod_epoch_freeze,
            ):
                flags.stop_recluster_armed = False
                recluster_now = epoch == 0 and flags.recluster_active
                flags.recluster_active = False
                self.log.info(f"epoch {epoch}: --stop-recluster: reclustering and freezing stop")
            if not flags.full_embedding and epoch >= config.force_full_embedding_epoch:
                self._enter_full_embedding(epoch)
            if recluster_now or is_recluster_epoch(epoch, config.mod_epoch, flags.recluster_active):
                started = time.perf_counter()
                self._recluster(epoch)
                recluster_s = time.perf_counter() - started
            progress = EpochProgress()
        lrs = self._set_lrs(epoch)
        plan = self.clusters.planner.plan_epoch(epoch)
        if not plan and self.dist.is_main:
            self.log.warning(
                f"epoch {epoch}: no batch to train: every cluster has fewer than --batch-size {config.batch_size} "
                f"samples after removal (sizes {sorted(self.clusters.planner.sizes.values())}); lower --batch-size"
            )
        progress.train_s += recluster_s
        loader = make_train_loader(
            self.data.train_set,
            plan,
            seed=config.random_seed,
            epoch=epoch,
            start_batch=progress.next_batch,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        progress = train_one_epoch(
            epoch,
            plan=plan,
            loader=loader,
            train_labels=self.train_labels,
            setup=self._step_setup(),
            full_embedding=flags.full_embedding,
            progress=progress,
            stop_requested=self._stop_requested,
            lrs=lrs,
            show_progress=self.dist.is_main and sys.stderr.isatty(),
        )
        if progress.next_batch < len(plan):
            self._save_mid_epoch(epoch, progress)
            return None
        started = time.perf_counter()
        metrics = self._evaluate()
        eval_s = time.perf_counter() - started
        improved = self._update_best(epoch, metrics)
        trained = max(progress.n_trained, 1)
        record = {
            "epoch": epoch,
            "K": self.clusters.k,
            "lr": lrs,
            "backbone_frozen": self._backbone_frozen(epoch),
            "full_embedding": flags.full_embedding,
            "loss_metric": progress.loss_metric_sum / trained if progress.n_trained else None,
            "loss_mask": progress.loss_mask_sum / trained if progress.n_trained else None,
            "n_batches": len(plan),
            "n_skipped": progress.n_skipped,
            "train_s": progress.train_s,
            "eval_s": eval_s,
            "best_epoch": flags.best_epoch,
            "best_value": flags.best_value,
            **metrics,
        }
        self._save_epoch_end(epoch, record, improved=improved)
        self._log_epoch(record)
        return record

    # ------------------------------------------------------------------ pieces of an epoch
    def _recluster(self, epoch: int) -> None:
        config = self.config
        splits = epoch >= 0 and splits_at_epoch(epoch, self.clusters.k, config.nb_clusters, config.hierarchy_method)
        if self.clusters.k == 1 and not splits:
            # One cluster and no split: the outcome and the seed stream do not depend on the features (§10 #41).
            features = np.zeros((len(self.data.train), 1), dtype=np.float32)
        else:
            mode = "penultimate" if config.penultimate_for_clusters else "embedding"
            features = self.embed(self.data.train, mode=mode, dataset=self.data.feature_set)
        mask_lr = scheduled_lr(self.config.base_lr * self.config.mask_lr_mult, max(epoch, 0), self.settings)
        result = recluster_step(
            epoch,
            state=self.clusters,
            features=features,
            train_labels=self.train_labels,
            config=self.config,
            model=self.model,
            optimizer=self.optimizer,
            mask_lr=mask_lr,
            faiss_device=self.device.index if self.config.backend == "faiss-gpu" else None,
            logger=self.log,
            dist=self.dist,
        )
        self.train_model = self._wrap_model()  # a split replaced mask parameters
        if self.dist.is_main:
            if self.run.recluster_path(epoch).exists():  # a resumed run redoes this recluster
                move_aside(self.run.recluster_path(epoch))
            save_recluster_record(self.run, epoch, result, self.train_labels, self.model.masks.stacked())
        if self.config.verbose:
            self.log.debug(f"masks: {self.model.masks.summary()}")

    def _enter_full_embedding(self, epoch: int) -> None:
        """The conquer stage: masks frozen and out of the optimizer; the regulariser is only recorded."""
        self.flags.full_embedding = True
        self.model.masks.freeze()
        if remove_mask_group(self.optimizer):  # logged with --verbose
            self.log.debug(f"epoch {epoch}: optimizer groups rebuilt: the mask group and its state removed")
        self.train_model = self._wrap_model()
        self.log.info(f"epoch {epoch}: conquer stage: training the full embedding; masks frozen")

    def _backbone_frozen(self, epoch: int) -> bool:
        config = self.config
        return backbone_frozen(
            epoch,
            mod_epoch=config.mod_epoch,
            mod_epoch_freeze=config.mod_epoch_freeze,
            active=self.flags.recluster_active,
        )

    def _set_lrs(self, epoch: int) -> dict:
        masks_frozen = self.config.masks_freeze_one_cluster and self.clusters.k == 1
        return set_epoch_lrs(
            self.optimizer,
            epoch,
            self.settings,
            backbone_frozen=self._backbone_frozen(epoch),
            masks_frozen=masks_frozen,
        )

    def _step_setup(self) -> StepSetup:
        config = self.config
        return StepSetup(
            model=self.train_model,
            masks=self.model.masks,
            criterion=self.criterion,
            optimizer=self.optimizer,
            scaler=self.scaler,
            device=self.device,
            amp_dtype=AMP_DTYPES[config.amp],
            channels_last=config.channels_last,
            masking_lambda=config.masking_lambda,
            with_l1=config.with_l1,
            seed=config.random_seed,
            dist=self.dist,
            debug_log=self.log.info if config.is_debug and self.dist.is_main else None,
        )

    def _evaluate(self) -> dict:
        """Every rank embeds its shard; rank 0 computes the metrics and shares them."""
        tasks = self.data.eval_tasks
        metrics = run_evaluation(
            tasks,
            lambda split: self.embed(split),
            dataset_name=self.config.dataset,
            with_nmi=nmi_enabled(self.config.train_nmi, tasks[0]),
            nmi_runs=1,
            backend=self.config.backend,
            device=self.device,
            compute=self.dist.is_main,
        )
        return broadcast_object(metrics, self.dist)

    def _wrap_model(self) -> torch.nn.Module:
        """Under torchrun, DDP over the current parameters (re-wrapped whenever masks change or freeze).

        The mask regulariser uses every mask outside the forward, which DDP's unused-parameter search rejects
        ("marked ready twice"). The graph is static per wrap instead: every trainable parameter gets exactly one
        gradient per step (backbone and embedding through the forward, every mask through the regulariser).
        """
        if not self.dist.distributed:
            return self.model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids, static_graph=True, broadcast_buffers=False)

    def _stop_requested(self) -> bool:
        return any_rank(self.preemption.requested, self.dist)

    def _update_best(self, epoch: int, metrics: dict) -> bool:
        value = metrics.get(self.selection_key)
        if value is None or not math.isfinite(value):
            return False
        if self.flags.best_value is None or value > self.flags.best_value:
            self.flags.best_epoch, self.flags.best_value = epoch, float(value)
            self.log.info(f"epoch {epoch}: new best {self.selection_key} {100 * value:.2f}")
            return True
        return False

    # ------------------------------------------------------------------ records and checkpoints
    def _state(self, epoch: int, record: dict | None, mid_epoch: dict | None = None) -> dict:
        return build_state(
            config_hash=self.config.hash(),
            epoch=epoch,
            model=self.model,
            optimizer=self.optimizer,
            criterion=self.criterion,
            scaler=self.scaler,
            cluster_state=self.clusters,
            flags=self.flags,
            record=record,
            mid_epoch=mid_epoch,
        )

    def _save_epoch_end(self, epoch: int, record: dict, *, improved: bool) -> None:
        """Order matters for crash safety: checkpoint, then the record line, then the status (§9.3)."""
        if not self.dist.is_main:
            return
        with stop_on_write_failure(f"the checkpoints or records of epoch {epoch} in {self.run.path}"):
            write_epoch_checkpoints(
                self.run, self._state(epoch, record), epoch=epoch, save_model=self.config.save_model, improved=improved
            )
            self.run.append_epoch(record)
            if self.wandb is not None:
                self.wandb.log(record)
            if self.config.save_masks:
                self.run.masks_dir.mkdir(exist_ok=True)
                np.save(
                    self.run.masks_dir / f"e{epoch_tag(epoch)}.npy",
                    self.model.masks.stacked().detach().float().cpu().numpy().astype(np.float16),
                )
            self.run.set_status("running", last_epoch=epoch)

    def _save_mid_epoch(self, epoch: int, progress: EpochProgress) -> None:
        if self.dist.is_main and self.config.save_model > 0:
            mid = {"progress": progress.state_dict(), "planner": self.clusters.planner.epoch_start_state_dict()}
            with stop_on_write_failure(f"the mid-epoch checkpoint in {self.run.path}"):
                save_checkpoint(self.run.checkpoint_path("last"), self._state(epoch, None, mid_epoch=mid))
        self._stop_interrupted(epoch - 1, at=f"epoch {epoch}, batch {progress.next_batch}")

    def _stop_interrupted(self, last_epoch: int, at: str | None = None) -> None:
        where = at or f"the end of epoch {last_epoch}"
        self.log.info(f"{self.preemption.signal_name}: stopped at {where}; run the same command again to resume")
        if self.dist.is_main:
            self.run.set_status("interrupted", message=f"received {self.preemption.signal_name}", last_epoch=last_epoch)

    def _restore(self, state: dict) -> tuple[int, EpochProgress | None]:
        """Continue exactly where the checkpoint stopped (METHOD.md §9.3)."""
        try:
            self.model.load_state_dict(state["model"])
            self.flags.load_state_dict(state["flags"])
            if self.flags.full_embedding:
                self.model.masks.freeze()
                remove_mask_group(self.optimizer)
            self.optimizer.load_state_dict(state["optimizer"])
            self.criterion.load_state_dict(state["criterion"])
        except (KeyError, RuntimeError, ValueError) as error:  # strict loads: missing, extra or reshaped entries
            detail = " ".join(line.strip() for line in str(error).splitlines())
            raise CheckpointError(
                f"checkpoint {self.resume_source} does not fit the model and optimizer this command builds "
                f"({type(error).__name__}: {detail[:500]}). It was altered or written by other code; resume from "
                "another checkpoint with --resume FILE, or add --overwrite to start again."
            ) from error
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        mid = state.get("mid_epoch")
        self.clusters.load_state_dict(
            state["clusters"],
            config=self.config,
            train_labels=self.train_labels,
            planner_state=mid["planner"] if mid else None,
        )
        restore_rng_states(state["rng"])
        self.train_model = self._wrap_model()
        epoch = int(state["epoch"])
        last_completed = epoch - 1 if mid else epoch
        if self.dist.is_main:
            for note in settle_run(self.run, state, source=self.resume_source, save_model=self.config.save_model):
                self.log.info(note)
            self.run.set_status("running", nb_epochs=self.config.nb_epochs, last_epoch=last_completed)
        if mid:
            self.log.info(f"resuming epoch {epoch} at batch {mid['progress']['next_batch']}")
            return epoch, EpochProgress.from_state(mid["progress"])
        self.log.info(f"resuming after epoch {epoch}")
        return epoch + 1, None

    # ------------------------------------------------------------------ logging
    def _best_summary(self) -> str:
        if self.flags.best_value is None:
            return f"no {self.selection_key} recorded"
        return f"best {self.selection_key} {100 * self.flags.best_value:.2f} at epoch {self.flags.best_epoch}"

    def _total_time(self) -> str:
        """Training, reclustering and evaluation time of every recorded epoch, earlier sessions of a resumed
        run included (start-up and data loading are not in the records)."""
        seconds = sum((record.get("train_s") or 0) + (record.get("eval_s") or 0) for record in self.run.epoch_records())
        return str(datetime.timedelta(seconds=round(seconds)))

    def _format_metrics(self, metrics: dict) -> str:
        shown = [key for key in metrics if key.startswith(("R@", "val/R@")) or key in ("NMI", "MAP@R", "mARP")]
        return ", ".join(f"{key} {100 * metrics[key]:.2f}" for key in shown if metrics[key] is not None)

    def _log_epoch(self, record: dict) -> None:
        losses = f"loss {record['loss_metric']:.4f}" if record["loss_metric"] is not None else "no trained batch"
        self.log.info(
            f"epoch {record['epoch']}: K={record['K']} {losses} (mask {record['loss_mask'] or 0:.4f}), "
            f"{record['n_batches']} batches ({record['n_skipped']} skipped), "
            f"train {record['train_s']:.1f}s, eval {record['eval_s']:.1f}s | {self._format_metrics(record)}"
        )
        summary = self.model.masks.summary()
        active = ", ".join(f"{item['active_dims']:.0f}" for item in summary)
        self.log.info(f"epoch {record['epoch']}: mask active dims [{active}]")


def _record_end(trainer: Trainer | None, state: str, message: str) -> None:
    """Best effort: the status of a run that stops on an error (the disk may be what failed)."""
    if trainer is None or not trainer.dist.is_main or not trainer.run.path.exists():
        return
    with contextlib.suppress(OSError):
        trainer.run.set_status(state, message=message)


def _shared_plan(config: Config, dist: DistContext) -> RunPlan:
    """Rank 0 decides what happens to the run folder; under torchrun the other ranks follow its decision.

    Planning on every rank would race with rank 0 creating the folder or moving it aside (--overwrite).
    """
    plan = plan_run(config, log=print) if dist.is_main else None
    try:
        decision = broadcast_object(
            None if plan is None else (plan.run.path, plan.resume_source, plan.finished_epochs), dist
        )
    except BaseException:
        if plan is not None:
            plan.run.unlock()
        raise
    if plan is not None:
        return plan
    path, source, finished = decision
    state = load_checkpoint(source) if source is not None and finished is None else None
    return RunPlan(RunFolder(path), state, source, finished)


def _report_finished(plan: RunPlan, config: Config, dist: DistContext) -> None:
    """Say that the run is done; first complete what a kill after its last checkpoint left unwritten (§9.3)."""
    if dist.is_main:
        state, run = plan.resume_state, plan.run
        if state is not None and plan.resume_source == run.checkpoint_path("last") and not plan.read_only:
            with stop_on_write_failure(f"the records of {run.path}"):
                notes = settle_run(run, state, source=plan.resume_source, save_model=config.save_model)
            for note in notes:
                print(note)
        if run.finish_if_complete(plan.finished_epochs):
            print(f"{run.path / STATUS_FILE} did not say finished; it does now.")
        print(
            f"already trained for {plan.finished_epochs} epochs ({run.path}); add --overwrite to train "
            "again, or a larger --nb-epochs to continue."
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer = plan = None
    # Subnormal activations of a freshly initialised network slow CPU convolutions several-fold; the
    # processor flag is process-wide, so it is switched back off when training returns.
    torch.set_flush_denormal(True)
    try:
        config = parse_config(argv)
        dist, device = init_distributed(config.cuda_device)
        if config.batch_size % dist.world_size:
            raise ConfigError(
                f"--batch-size {config.batch_size} must be divisible by the {dist.world_size} torchrun processes "
                "(each trains an equal share of every batch)."
            )
        plan = _shared_plan(config, dist)  # on rank 0 it holds the run folder's lock until the end
        if plan.finished_epochs is not None:
            _report_finished(plan, config, dist)
            raise SystemExit(0)
        trainer = Trainer(config, plan, argv, dist, device)
        trainer.fit()
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        _record_end(trainer, "failed", str(error))
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted (Ctrl-C): the work since the last checkpoint is lost. Run the same command again to resume "
            "from that checkpoint. To stop after the current step with a checkpoint instead, send SIGTERM or "
            f"SIGUSR1 (kill -TERM {os.getpid()}).",
            file=sys.stderr,
        )
        _record_end(trainer, "interrupted", "KeyboardInterrupt")
        return 130
    except Exception as error:
        _record_end(trainer, "failed", f"{type(error).__name__}: {error}")
        raise
    finally:
        torch.set_flush_denormal(False)
        if plan is not None:
            plan.run.unlock()
        if trainer is not None:
            trainer.preemption.uninstall()
            if trainer.wandb is not None:
                trainer.wandb.finish()
            shutdown(trainer.dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
