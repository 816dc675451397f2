"""Checks of METHOD.md §2.3: flag-only ones before anything is loaded, dataset ones after parsing annotations.

Every problem found is reported at once, in one ConfigError whose lines name the flag(s) and the fix.
Warnings are returned as strings, for the run's log.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from typing import TYPE_CHECKING

from lib.errors import ConfigError, DatasetError
from lib.faiss_backend import GPU_BUILDS, faiss_gpu_count
from metriclearning.criteria import SOFT_CRITERIA

if TYPE_CHECKING:
    from experiment.config import Config

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CRITERIA = ("MarginLoss", "TripletLoss", "TripletSemihardLoss", "TripletAllLoss", "NPairsLoss")
INIT_METHODS = ("pt_splitted", "kaiming_normal_fan_in", "kaiming_normal_fan_out", "trunc_normal")
_XAVIER = re.compile(r"^xavier_(uniform|normal)_(?P<gain>.+)$")
_SEED_LIMIT = 2**32  # NumPy's legacy seeding (RandomState) accepts [0, 2**32)

_POSITIVE_INTS = (
    "sz_embedding",
    "sz_resize",
    "sz_crop",
    "num_replicas",
    "nb_clusters",
    "mod_epoch",
    "batch_size",
    "num_samples_per_class",
    "eval_batch_size",
    "nb_epochs",
    "glyphs_renders",
    "glyphs_size",
)
_NON_NEGATIVE_INTS = ("mod_epoch_freeze", "num_workers", "save_model", "cuda_device", "glyphs_classes")
_NON_NEGATIVE_FLOATS = (
    "margin",
    "lr_beta",
    "lr_alpha",
    "base_lr",
    "emb_lr_mult",
    "weight_decay",
    "mask_lr_mult",
    "mask_wd_mult",
    "masking_lambda",
)


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def validate_flags(config: Config, *, cuda_available: bool | None = None) -> list[str]:
    """Raise one ConfigError listing every flag-only problem; return the warnings."""
    errors = (
        _range_errors(config)
        + _batch_shape_errors(config)
        + _combination_errors(config)
        + _support_errors(config)
        + _file_errors(config)
        + _device_errors(config, cuda_available)
    )
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        raise ConfigError(f"{len(errors)} problems with the flags:\n" + "\n".join(f"  - {e}" for e in errors))
    return _warnings(config)


def recorded_config_errors(config: Config) -> list[str]:
    """The checks of ``validate_flags`` that depend on the values alone, not on this machine or its files:
    a recorded config that fails them was damaged or edited after training."""
    return _range_errors(config) + _batch_shape_errors(config) + _combination_errors(config) + _support_errors(config)


def validate_against_dataset(config: Config, n_train_classes: int, n_train_images: int) -> list[str]:
    """Checks that need the parsed training split; returns the warnings."""
    if n_train_classes < 2:
        raise DatasetError(
            f"the training split of --dataset {config.dataset} has {n_train_classes} class(es); metric "
            "learning needs at least 2. Check --dataset-dir, or raise --ratio-classes / --glyphs-classes, "
            "or lower --val-ratio."
        )
    if n_train_images < config.batch_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {n_train_images} training images; lower --batch-size."
        )
    if config.nb_clusters > n_train_classes / 2:
        return [
            f"--nb-clusters {config.nb_clusters} is more than half the {n_train_classes} training classes, so "
            "not every cluster can hold 2 classes; degenerate clusters will be merged. Lower --nb-clusters."
        ]
    return []


def _range_errors(config: Config) -> list[str]:
    errors = []
    derived_eval_batch = "eval_batch_size" not in config.explicit_flags and config.eval_batch_size == config.batch_size
    for field in _POSITIVE_INTS:
        if field == "eval_batch_size" and derived_eval_batch:  # --batch-size's own error says it all
            continue
        if getattr(config, field) < 1:
            errors.append(f"{flag(field)} must be a positive integer, got {getattr(config, field)}.")
    for field in _NON_NEGATIVE_INTS:
        if getattr(config, field) < 0:
            errors.append(f"{flag(field)} must be >= 0, got {getattr(config, field)}.")
    for field in _NON_NEGATIVE_FLOATS:
        if getattr(config, field) < 0:
            errors.append(f"{flag(field)} must be >= 0, got {getattr(config, field)}.")
    for field in ("random_seed", "clustering_random_state"):
        value = getattr(config, field)
        if value is not None and not 0 <= value < _SEED_LIMIT:
            errors.append(f"{flag(field)} must be in [0, 2**32), got {value}.")
    if not config.alpha > 0:
        errors.append(f"--alpha must be > 0 (the NPairsLoss scale of the similarities), got {config.alpha}.")
    if not 0 < config.ratio_classes <= 1:
        errors.append(f"--ratio-classes must be in (0, 1], got {config.ratio_classes}.")
    if not 0 <= config.val_ratio < 1:
        errors.append(f"--val-ratio must be in [0, 1), got {config.val_ratio}.")
    if not config.lr_step > 0:
        errors.append(f"--lr-step must be > 0 (inf = constant LR), got {config.lr_step}.")
    if not config.lr_gamma > 0:
        errors.append(f"--lr-gamma must be > 0, got {config.lr_gamma}.")
    if not 0 <= config.dropout < 1:
        errors.append(f"--dropout must be in [0, 1), got {config.dropout}.")
    return errors


def _batch_shape_errors(config: Config) -> list[str]:
    """METHOD.md §2.3, per batch sampler (§6)."""
    b, s, r, sampler = config.batch_size, config.num_samples_per_class, config.num_replicas, config.batch_sampler
    if b < 1 or s < 1 or r < 1:  # already reported as range errors
        return []
    errors = []
    if sampler == "balanced_old" and b % s:
        errors.append(
            f"--batch-size {b} must be a multiple of --num-samples-per-class {s} with balanced_old; change one of them."
        )
    if sampler == "adaptbalanced" and (b % r or (b // r) % s):
        errors.append(
            f"with adaptbalanced, --batch-size {b} must be a multiple of --num-replicas {r}, and "
            f"--batch-size / --num-replicas of --num-samples-per-class {s}; change one of them."
        )
    if sampler == "randombatch" and (b % r or b // r < 2):
        errors.append(
            f"with randombatch, --batch-size {b} must be a multiple of --num-replicas {r} with at least 2 "
            "distinct images per batch; raise --batch-size or lower --num-replicas."
        )
    if sampler in ("balanced_old", "adaptbalanced", "npairs") and s < 2:
        errors.append(f"--num-samples-per-class must be >= 2 with {sampler} (a class needs a positive pair).")
    return errors


def _combination_errors(config: Config) -> list[str]:
    errors = []
    if config.nb_clusters > 1 and config.mod_epoch >= 1 and config.mod_epoch_freeze >= config.mod_epoch:
        errors.append(
            f"--mod-epoch-freeze {config.mod_epoch_freeze} must be smaller than --mod-epoch "
            f"{config.mod_epoch} when --nb-clusters > 1, or the backbone is never trained."
        )
    if config.num_replicas > 1:
        if config.album is None:
            errors.append("--num-replicas > 1 needs --album: identical replicas add nothing without augmentation.")
        if config.batch_sampler in ("balanced_old", "npairs"):
            errors.append(
                f"--num-replicas > 1 is not supported by --batch-sampler {config.batch_sampler}; "
                "use adaptbalanced or randombatch."
            )
    if config.masking_init == "normal" and config.fixed_mask:
        errors.append("--masking-init normal conflicts with --fixed-mask 1 (fixed masks are 0/1 blocks); drop one.")
    if config.fixed_mask and config.nb_clusters > config.sz_embedding >= 1:
        errors.append(
            f"--fixed-mask 1 gives each learner a block of dimensions, so --sz-embedding {config.sz_embedding} "
            f"must be at least --nb-clusters {config.nb_clusters}."
        )
    if config.masks_normalize_before_sum is not None and not config.masks_sum_for_full_emb:
        errors.append("--masks-normalize-before-sum needs --masks-sum-for-full-emb 1; add it or drop the former.")
    if not config.reset_learners_fix:
        errors.append("--reset-learners-fix 0 is not supported: masks always follow the clusters. Drop the flag.")
    return errors


def _support_errors(config: Config) -> list[str]:
    errors = []
    if config.arch not in ARCHS:
        errors.append(f"--arch {config.arch!r} is not supported; choose one of {', '.join(ARCHS)}.")
    if config.criterion == "KantorovMarginLoss":
        errors.append(
            f"--criterion KantorovMarginLoss is not supported by this implementation; "
            f"choose one of {', '.join(CRITERIA)}."
        )
    elif config.criterion not in CRITERIA:
        errors.append(f"--criterion {config.criterion!r} is not supported; choose one of {', '.join(CRITERIA)}.")
    if config.init_method is not None and not _valid_init_method(config.init_method):
        errors.append(
            f"--init-method {config.init_method!r} is unknown; use none, pt_splitted, xavier_uniform_<gain>, "
            "xavier_normal_<gain> (gain a positive number, e.g. xavier_normal_1.0), kaiming_normal_fan_in, "
            "kaiming_normal_fan_out or trunc_normal."
        )
    return errors


def _valid_init_method(name: str) -> bool:
    if name in INIT_METHODS:
        return True
    match = _XAVIER.match(name)
    if match is None:
        return False
    try:
        gain = float(match["gain"])
    except ValueError:
        return False
    return math.isfinite(gain) and gain > 0


def _file_errors(config: Config) -> list[str]:
    """Files whose content enters the config hash must exist before the run folder can be named."""
    return [
        f"{flag(field)} {path!r} is not a file; pass an existing file."
        for field in ("split_file", "pretrained_weights")
        if (path := getattr(config, field)) is not None and not os.path.isfile(path)
    ]


def _device_errors(config: Config, cuda_available: bool | None) -> list[str]:
    errors = []
    if config.backend == "faiss-gpu":
        from_preset = config.preset is not None and "backend" not in config.explicit_flags
        origin = f" (set by --preset {config.preset})" if from_preset else ""
        if not _cuda(cuda_available):
            errors.append(f"--backend faiss-gpu{origin} needs CUDA, and none is available; add --backend faiss.")
        elif faiss_gpu_count() == 0:
            errors.append(
                f"--backend faiss-gpu{origin} needs a GPU build of faiss, but the installed faiss has no GPU "
                f"support; uninstall faiss-cpu and install one matching your CUDA ({GPU_BUILDS}), "
                "or add --backend faiss."
            )
    if config.amp == "fp16" and not _cuda(cuda_available):
        errors.append("--amp fp16 needs CUDA, and none is available; use --amp bf16 or --amp off.")
    if config.wandb_enabled and importlib.util.find_spec("wandb") is None:
        errors.append("--wandb-enabled needs the wandb package: `pip install wandb`, or drop the flag.")
    return errors


def _cuda(cuda_available: bool | None) -> bool:
    if cuda_available is None:
        import torch

        return torch.cuda.is_available()
    return cuda_available


def _warnings(config: Config) -> list[str]:
    warnings = []
    if "init_clusters" in config.explicit_flags and config.hierarchy_method != "top_bot":
        warnings.append(
            f"--init-clusters is ignored with --hierarchy-method {config.hierarchy_method}: all "
            f"{config.nb_clusters} clusters exist from the start."
        )
    if config.soft_loss and config.criterion not in SOFT_CRITERIA:
        warnings.append(
            f"--soft-loss is ignored with --criterion {config.criterion} (only for TripletLoss and "
            "TripletSemihardLoss)."
        )
    if config.save_model == 0:
        warnings.append("--save-model 0: no checkpoints are written, so this run cannot be resumed.")
    if config.split_file is not None and config.dataset != "folder":
        warnings.append(f"--split-file is ignored with --dataset {config.dataset} (it is for --dataset folder).")
    if config.sz_crop > config.sz_resize:
        warnings.append(
            f"--sz-crop {config.sz_crop} is larger than --sz-resize {config.sz_resize}: evaluation images are padded "
            "with black borders to the crop size (the seed used 256 and 224)."
        )
    return warnings
