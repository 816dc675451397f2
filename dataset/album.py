"""``Geom`` and ``GeomColor`` (METHOD.md §7.9) on the albumentations 2.x API.

A module of its own so that importing the project does not import albumentations unless these are used.
"""

import random

import albumentations as A
import cv2
import numpy as np
import torch

from dataset.transforms import (
    DROPOUT_HOLE_PX,
    DROPOUT_REFERENCE_CROP,
    RRC_RATIO,
    RRC_SCALE,
    as_rgb,
    to_normalized_tensor,
)


def _shift_rotate() -> A.Affine:
    """shift ≤ ±6.25 % per axis, no scaling, rotation uniform in ±45°, reflect-101 border, p 0.5."""
    return A.Affine(
        translate_percent={"x": (-0.0625, 0.0625), "y": (-0.0625, 0.0625)},
        scale=1.0,
        rotate=(-45.0, 45.0),
        interpolation=cv2.INTER_LINEAR,
        border_mode=cv2.BORDER_REFLECT_101,
        p=0.5,
    )


def _coarse_dropout(sz_crop: int) -> A.CoarseDropout:
    """1–5 holes of 40 × 40 px (fill 0, p 0.5), proportionally smaller below 224-px crops.

    The 40 px were chosen for 224-px crops; a fixed 40 px hole would blank a whole 32-px glyph crop.
    """
    hole = max(1, min(DROPOUT_HOLE_PX, round(DROPOUT_HOLE_PX * sz_crop / DROPOUT_REFERENCE_CROP)))
    return A.CoarseDropout(
        num_holes_range=(1, 5), hole_height_range=(hole, hole), hole_width_range=(hole, hole), fill=0, p=0.5
    )


def _albumentations_steps(album: str, sz_crop: int) -> list[A.BasicTransform]:
    crop = A.RandomResizedCrop(
        size=(sz_crop, sz_crop), scale=RRC_SCALE, ratio=RRC_RATIO, interpolation=cv2.INTER_LINEAR
    )
    blur = A.Blur(blur_limit=(3, 7), p=0.5)
    if album == "Geom":
        return [_shift_rotate(), crop, A.HorizontalFlip(p=0.5), _coarse_dropout(sz_crop), blur]
    brightness_contrast = A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5)
    return [crop, brightness_contrast, A.HorizontalFlip(p=0.5), _shift_rotate(), _coarse_dropout(sz_crop), blur]


class AlbumentationsTransform:
    """``Geom`` / ``GeomColor`` (§7.9) on albumentations 2.x, then the shared normalisation.

    Before each call the pipeline is pointed at the item's generator (and a Python ``Random`` seeded from
    it, which albumentations uses for probabilities), so the output is a function of the item's seed. One
    instance must not be called from two threads at once; loader workers are processes, each with a copy.
    """

    def __init__(self, album: str, sz_crop: int):
        self.album = album
        self.pipeline = A.Compose(_albumentations_steps(album, sz_crop))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        self.pipeline.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        return to_normalized_tensor(self.pipeline(image=as_rgb(image))["image"])
