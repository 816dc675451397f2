"""Image transforms (METHOD.md §4.5, §7.9): RGB uint8 H×W×3 in, ImageNet-normalised float32 C×H×W out.

Every transform takes its randomness from the ``numpy.random.Generator`` it is given, one per item: an
augmentation then depends only on the item's seed, never on the loader worker or the order of calls, and
each ``--num-replicas`` copy (its own seed) is augmented independently. The pipelines work on numpy arrays
(OpenCV, and torchvision's uint8 kernel for resizing, which antialiases as the original's PIL images did) and
convert to a tensor once at the end, which is cheaper than PIL + torchvision (benchmarks/bench_data.py).
"""

import math
from collections.abc import Callable

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from lib.errors import ConfigError

Transform = Callable[[np.ndarray, np.random.Generator], torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ALBUMS = ("Geom", "GeomColor", "ColorHeavy")
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
DROPOUT_HOLE_PX = 40
DROPOUT_REFERENCE_CROP = 224

_BLOB_PARAMS = cv2.dnn.Image2BlobParams()
_BLOB_PARAMS.scalefactor = tuple(1.0 / (255.0 * s) for s in IMAGENET_STD)
_BLOB_PARAMS.mean = tuple(255.0 * m for m in IMAGENET_MEAN)
_BLOB_PARAMS.swapRB = False
_BLOB_PARAMS.ddepth = cv2.CV_32F


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An H×W×3 uint8 array; grayscale (H×W or H×W×1) is replicated to 3 channels (§4.5)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def to_normalized_tensor(image: np.ndarray) -> torch.Tensor:
    """(x / 255 − mean) / std as a contiguous float32 C×H×W tensor, in one fused OpenCV pass."""
    blob = cv2.dnn.blobFromImageWithParams(np.ascontiguousarray(image), _BLOB_PARAMS)
    return torch.from_numpy(blob[0])


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with antialiasing when shrinking, as PIL (the original's torchvision-on-PIL pipelines)
    does: within one grey level of PIL. OpenCV's INTER_LINEAR does not antialias (mean difference ~9 grey
    levels on textured images shrunk 1.5x). torchvision's uint8 kernel takes the H×W×3 array as a channels-last
    view; a contiguous copy of a crop first is faster than its strided view."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    resized = TF.resize(pixels, [height, width], antialias=True)
    return resized.permute(1, 2, 0).numpy()


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize so that the shorter side is ``size``; the longer side is truncated to an integer."""
    height, width = image.shape[:2]
    if min(height, width) == size:
        return image
    if height <= width:
        new_height, new_width = size, int(size * width / height)
    else:
        new_height, new_width = int(size * height / width), size
    return resize_bilinear(image, new_height, new_width)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central size × size window (offsets rounded as torchvision does); zero-padded if the image is smaller."""
    height, width = image.shape[:2]
    if height < size or width < size:
        pad_y, pad_x = max(size - height, 0), max(size - width, 0)
        image = cv2.copyMakeBorder(
            image, pad_y // 2, (pad_y + 1) // 2, pad_x // 2, (pad_x + 1) // 2, cv2.BORDER_CONSTANT, value=0
        )
        height, width = image.shape[:2]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image[top : top + size, left : left + size]


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) drawn as torchvision's RandomResizedCrop does: 10 tries, then a central fallback."""
    area = height * width
    log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    for _ in range(RRC_ATTEMPTS):
        target_area = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        w, h = width, int(round(width / RRC_RATIO[0]))
    elif in_ratio > RRC_RATIO[1]:
        h, w = height, int(round(height * RRC_RATIO[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng)
    return resize_bilinear(image[top : top + h, left : left + w], size, size)


def random_hflip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image[:, ::-1] if rng.random() < 0.5 else image


class EvalTransform:
    """Shorter side to ``sz_resize``, centre crop ``sz_crop``, normalise: the eval and feature transform."""

    def __init__(self, sz_resize: int, sz_crop: int):
        self.sz_resize = sz_resize
        self.sz_crop = sz_crop

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        image = center_crop(resize_shorter_side(as_rgb(image), self.sz_resize), self.sz_crop)
        return to_normalized_tensor(image)


class DefaultTrainTransform:
    """RandomResizedCrop → horizontal flip (p 0.5) → normalise: the training pipeline without ``--album``."""

    def __init__(self, sz_crop: int):
        self.sz_crop = sz_crop

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        image = random_hflip(random_resized_crop(as_rgb(image), self.sz_crop, rng), rng)
        return to_normalized_tensor(image)


class ColorHeavyTransform:
    """RandomResizedCrop → flip → colour jitter (p 0.8) → grayscale (p 0.2) → normalise, as torchvision's.

    The jitter applies brightness, contrast, saturation and hue factors in a random order, like
    ``ColorJitter(0.4, 0.4, 0.4, 0.1)``; the factors come from ``rng``, the arithmetic from torchvision.
    """

    BRIGHTNESS = CONTRAST = SATURATION = 0.4
    HUE = 0.1

    def __init__(self, sz_crop: int):
        self.sz_crop = sz_crop

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        image = random_hflip(random_resized_crop(as_rgb(image), self.sz_crop, rng), rng)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        if rng.random() < 0.8:
            tensor = self._jitter(tensor, rng)
        if rng.random() < 0.2:
            tensor = TF.rgb_to_grayscale(tensor, num_output_channels=3)
        return to_normalized_tensor(tensor.permute(1, 2, 0).numpy())

    def _jitter(self, tensor: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        order = rng.permutation(4)
        brightness = rng.uniform(1 - self.BRIGHTNESS, 1 + self.BRIGHTNESS)
        contrast = rng.uniform(1 - self.CONTRAST, 1 + self.CONTRAST)
        saturation = rng.uniform(1 - self.SATURATION, 1 + self.SATURATION)
        hue = rng.uniform(-self.HUE, self.HUE)
        for op in order:
            if op == 0:
                tensor = TF.adjust_brightness(tensor, brightness)
            elif op == 1:
                tensor = TF.adjust_contrast(tensor, contrast)
            elif op == 2:
                tensor = TF.adjust_saturation(tensor, saturation)
            else:
                tensor = TF.adjust_hue(tensor, hue)
        return tensor


def build_eval_transform(sz_resize: int, sz_crop: int) -> Transform:
    return EvalTransform(sz_resize, sz_crop)


def build_train_transform(album: str | None, sz_resize: int, sz_crop: int, dataset_name: str) -> Transform:
    """The training pipeline of ``--album``; for ``glyphs`` without an album, the eval transform (§7.9).

    Flipping or cropping a character can change its identity, and the glyph renders already vary.
    """
    if album is None:
        if dataset_name == "glyphs":
            return EvalTransform(sz_resize, sz_crop)
        return DefaultTrainTransform(sz_crop)
    if album == "ColorHeavy":
        return ColorHeavyTransform(sz_crop)
    if album in ("Geom", "GeomColor"):
        from dataset.album import AlbumentationsTransform  # albumentations takes seconds to import

        return AlbumentationsTransform(album, sz_crop)
    raise ConfigError(f"--album {album}: unknown augmentation family; choose one of {', '.join(ALBUMS)} or omit it")
