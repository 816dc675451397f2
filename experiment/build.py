"""From a Config to the run's parts: data, model, criterion, optimizer (METHOD.md §3.1 steps 4-5)."""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Subset

from dataset.base import ImageDataset, LoadedDataset, Split
from dataset.loader import make_eval_loader
from dataset.registry import load_dataset, split_errors
from dataset.subsets import carve_validation
from dataset.transforms import build_eval_transform, build_train_transform
from experiment.config import Config
from experiment.protocol import EvalTask, evaluation_tasks
from experiment.validation import validate_against_dataset
from lib.dist import DistContext, all_reduce_sum_array
from lib.errors import DatasetError
from lib.seeding import torch_generator
from metriclearning.criteria import build_criterion
from metriclearning.features import extract_features
from metriclearning.model import EmbeddingModel
from metriclearning.optim import OptimSettings

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class RunData:
    dataset: LoadedDataset
    train: Split  # the training classes (validation classes removed)
    val: Split | None
    train_set: ImageDataset  # training transforms
    feature_set: ImageDataset  # the same images with eval transforms, for clustering
    eval_tasks: list[EvalTask]
    warnings: list[str]


def build_data(config: Config, *, all_vid_lists: bool = False, glyphs_cache: bool = True) -> RunData:
    dataset = load_dataset(
        config.dataset,
        config.dataset_dir,
        ratio_classes=config.ratio_classes,
        split_file=config.split_file,
        glyphs_classes=config.glyphs_classes,
        glyphs_renders=config.glyphs_renders,
        glyphs_size=config.glyphs_size,
        glyphs_cache=glyphs_cache,
    )
    train, val = dataset.splits["train"], None
    if config.val_ratio > 0:
        train, val = carve_validation(train, config.val_ratio, config.random_seed)
    warnings = list(dataset.warnings) + validate_against_dataset(config, train.n_classes_present, len(train))
    _check_evaluated_splits(config.dataset, dataset, val)
    eval_transform = build_eval_transform(config.sz_resize, config.sz_crop)
    train_transform = build_train_transform(config.album, config.sz_resize, config.sz_crop, config.dataset)
    return RunData(
        dataset=dataset,
        train=train,
        val=val,
        train_set=ImageDataset(train, train_transform),
        feature_set=ImageDataset(train, eval_transform),
        eval_tasks=evaluation_tasks(config.dataset, dataset.splits, val=val, all_vid_lists=all_vid_lists),
        warnings=warnings,
    )


def _check_evaluated_splits(dataset_name: str, dataset: LoadedDataset, val: Split | None) -> None:
    """Every split that is evaluated needs 2 classes; checked before training, as an empty list file would only
    fail at the first evaluation, and a one-class set would report R@1 = 100 %."""
    evaluated = {name: split for name, split in dataset.splits.items() if name != "train"}
    problems = split_errors(dataset_name, evaluated | ({"val": val} if val is not None else {}))
    if problems:
        raise DatasetError("; ".join(problems) + ". Check the dataset's list files in --dataset-dir, or --val-ratio.")


def build_model(config: Config, *, n_masks: int, device: torch.device) -> EmbeddingModel:
    model = EmbeddingModel(
        arch=config.arch,
        sz_embedding=config.sz_embedding,
        pooling=config.features_pooling,
        dropout=config.dropout,
        init_method=config.init_method,
        nb_clusters_final=config.nb_clusters,
        n_masks=n_masks,
        masking_init=config.masking_init,
        fixed_mask=config.fixed_mask,
        mask_relu=config.mask_relu,
        masks_sum_for_full_emb=config.masks_sum_for_full_emb,
        masks_normalize_before_sum=config.masks_normalize_before_sum,
        pretrained=config.pretrained,
        pretrained_weights=config.pretrained_weights,
        generator=torch_generator(config.random_seed, "model-init"),
    ).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_run_criterion(config: Config, n_train_classes: int, device: torch.device) -> torch.nn.Module:
    return build_criterion(
        config.criterion,
        margin=config.margin,
        sampler=config.sampler,
        soft_loss=config.soft_loss,
        lr_beta=config.lr_beta,
        n_train_classes=n_train_classes,
        alpha=config.alpha,
        lr_alpha=config.lr_alpha,
    ).to(device)


def optim_settings(config: Config) -> OptimSettings:
    return OptimSettings(
        optimizer=config.optimizer,
        base_lr=config.base_lr,
        emb_lr_mult=config.emb_lr_mult,
        weight_decay=config.weight_decay,
        mask_lr_mult=config.mask_lr_mult,
        mask_wd_mult=config.mask_wd_mult,
        lr_step=config.lr_step,
        lr_gamma=config.lr_gamma,
    )


class Embedder:
    """Embeds a split (or the clustering features of the training set) with the eval loader.

    Under torchrun every rank embeds every world_size-th image and the shards are summed into the whole.
    """

    def __init__(self, model: EmbeddingModel, config: Config, device: torch.device, dist: DistContext):
        self.model, self.config, self.device, self.dist = model, config, device, dist
        self.eval_transform = build_eval_transform(config.sz_resize, config.sz_crop)

    def __call__(self, split: Split, *, mode: str = "embedding", dataset: ImageDataset | None = None) -> np.ndarray:
        dataset = dataset or ImageDataset(split, self.eval_transform)
        if self.dist.distributed:
            dataset = Subset(dataset, range(self.dist.rank, len(split), self.dist.world_size))
        loader = make_eval_loader(
            dataset,
            batch_size=self.config.eval_batch_size,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        features = extract_features(
            self.model,
            loader,
            self.device,
            mode=mode,
            n_items=len(split),
            amp_dtype=AMP_DTYPES[self.config.amp],
            channels_last=self.config.channels_last,
        )
        return all_reduce_sum_array(features, self.dist, self.device)
