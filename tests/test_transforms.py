import math
import pickle

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from dataset.transforms import (
    EvalTransform,
    build_eval_transform,
    build_train_transform,
    random_resized_crop_box,
    resize_shorter_side,
)
from lib.errors import ConfigError

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
FAMILIES = [None, "ColorHeavy", "Geom", "GeomColor"]


@pytest.fixture(autouse=True)
def one_thread():
    """Loader workers run torch single-threaded; on a busy machine several threads only add overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photo(height: int = 150, width: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def reference_normalise(image: np.ndarray) -> torch.Tensor:
    chw = image.astype(np.float64).transpose(2, 0, 1) / 255.0
    return torch.from_numpy((chw - MEAN[:, None, None]) / STD[:, None, None]).float()


@pytest.mark.parametrize("album", FAMILIES)
def test_train_output_shape_dtype_and_determinism_per_seed(album):
    transform = build_train_transform(album, 72, 64, "cub")
    image = photo()
    first = transform(image, np.random.default_rng(7))
    again = transform(image, np.random.default_rng(7))
    other = transform(image, np.random.default_rng(8))
    assert first.shape == (3, 64, 64) and first.dtype == torch.float32 and first.is_contiguous()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    np.testing.assert_array_equal(image, photo())  # the input is never modified in place


@pytest.mark.parametrize("album", FAMILIES)
def test_read_only_and_grayscale_inputs_are_accepted(album):
    gray = photo()[:, :, 0].copy()
    gray.setflags(write=False)
    out = build_train_transform(album, 72, 64, "cub")(gray, np.random.default_rng(1))
    assert out.shape == (3, 64, 64)
    assert torch.isfinite(out).all()


def test_constant_image_maps_to_the_normalised_constant():
    image = np.full((40, 60, 3), (0, 128, 255), dtype=np.uint8)
    out = build_eval_transform(32, 32)(image, np.random.default_rng(0))
    expected = (np.array([0, 128, 255]) / 255.0 - MEAN) / STD
    assert out.shape == (3, 32, 32)
    for channel in range(3):
        assert torch.allclose(out[channel], torch.full((32, 32), float(expected[channel])), atol=1e-5)


def test_grayscale_is_replicated_to_three_channels():
    gray = np.full((32, 32), 200, dtype=np.uint8)
    out = build_eval_transform(32, 32)(gray, np.random.default_rng(0))
    expected = (200 / 255.0 - MEAN) / STD
    assert torch.allclose(out[:, 5, 5], torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def test_eval_resizes_the_shorter_side_then_crops_the_centre():
    image = photo(375, 500)
    resized = resize_shorter_side(image, 256)
    assert resized.shape == (256, 341, 3)  # 256 * 500 / 375 = 341.33, truncated
    out = build_eval_transform(256, 224)(image, np.random.default_rng(0))
    # the original's pipeline: torchvision on PIL images, whose bilinear resize antialiases when shrinking
    pil_resized = np.asarray(Image.fromarray(image).resize((341, 256), Image.BILINEAR))
    reference = reference_normalise(pil_resized[16:240, 58:282])  # round(58.5) = 58
    assert out.shape == (3, 224, 224)
    one_grey_level = 1 / (255 * min(STD))
    assert (out - reference).abs().max() <= one_grey_level + 1e-5
    aliased = reference_normalise(cv2.resize(image, (341, 256), interpolation=cv2.INTER_LINEAR)[16:240, 58:282])
    assert (aliased - reference).abs().mean() > 10 * (out - reference).abs().mean()  # OpenCV's plain bilinear is not
    portrait = resize_shorter_side(photo(500, 375), 256)
    assert portrait.shape == (341, 256, 3)


def test_eval_resize_is_a_no_op_at_the_target_size_and_ignores_the_generator():
    image = photo(256, 300)
    assert resize_shorter_side(image, 256) is image
    transform = build_eval_transform(256, 224)
    a = transform(image, np.random.default_rng(0))
    b = transform(image, np.random.default_rng(1))
    assert torch.equal(a, b)
    assert torch.allclose(a, reference_normalise(image[16:240, 38:262]), atol=1e-5)


def test_glyphs_without_album_train_with_the_eval_transform():
    transform = build_train_transform(None, 32, 32, "glyphs")
    assert isinstance(transform, EvalTransform)
    glyph = photo(32, 32)[:, :, 0]
    assert torch.equal(transform(glyph, np.random.default_rng(0)), transform(glyph, np.random.default_rng(5)))
    assert not isinstance(build_train_transform("Geom", 32, 32, "glyphs"), EvalTransform)


def test_unknown_album_is_a_config_error():
    with pytest.raises(ConfigError, match="--album"):
        build_train_transform("Colour", 256, 224, "cub")


def test_random_resized_crop_falls_back_to_the_centre_for_extreme_shapes():
    # No 3/4–4/3 crop of at least 8 % of a 10 × 1000 strip fits, so all ten tries fail.
    assert random_resized_crop_box(10, 1000, np.random.default_rng(0)) == (0, 493, 10, 13)
    assert random_resized_crop_box(1000, 10, np.random.default_rng(0)) == (493, 0, 13, 10)


def test_random_resized_crop_statistics_match_torchvision():
    height, width, n = 375, 500, 3000
    rng = np.random.default_rng(0)
    ours = np.array([random_resized_crop_box(height, width, rng) for _ in range(n)], dtype=np.float64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        image = torch.zeros(1, height, width)
        theirs = np.array(
            [RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], dtype=np.float64
        )
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area_ours, area_theirs = (b[:, 2] * b[:, 3] / (height * width) for b in (ours, theirs))
    ratio_ours, ratio_theirs = (np.log(b[:, 3] / b[:, 2]) for b in (ours, theirs))
    assert abs(area_ours.mean() - area_theirs.mean()) < 0.03
    assert abs(area_ours.std() - area_theirs.std()) < 0.03
    assert abs(ratio_ours.mean() - ratio_theirs.mean()) < 0.03
    assert abs(ratio_ours.std() - ratio_theirs.std()) < 0.03
    assert area_ours.min() >= 0.07 and ratio_ours.max() <= math.log(4 / 3) + 0.05
    centre_x = ours[:, 1] + ours[:, 3] / 2
    assert abs(centre_x.mean() - width / 2) < 10  # crops are not biased to one side


def test_default_train_flips_about_half_the_time():
    gradient = np.tile(np.linspace(0, 255, 120).astype(np.uint8)[None, :, None], (90, 1, 3))
    transform = build_train_transform(None, 100, 48, "cub")
    flipped = []
    for seed in range(300):
        out = transform(gradient, np.random.default_rng(seed))
        flipped.append(bool(out[0, :, 0].mean() > out[0, :, -1].mean()))
    assert 0.4 < np.mean(flipped) < 0.6


def test_colorheavy_sometimes_outputs_gray_and_sometimes_changes_colour():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[..., 0] = 200  # a red square: any grayscale output has equal channels
    transform = build_train_transform("ColorHeavy", 64, 64, "cub")
    gray = changed = 0
    for seed in range(100):
        raw = transform(image, np.random.default_rng(seed)) * torch.tensor(STD).view(3, 1, 1).float()
        raw = raw + torch.tensor(MEAN).view(3, 1, 1).float()
        gray += bool(torch.allclose(raw[0], raw[1], atol=1e-3) and torch.allclose(raw[1], raw[2], atol=1e-3))
        changed += bool((raw[0] - 200 / 255).abs().max() > 2 / 255)
    assert 8 <= gray <= 35  # p = 0.2
    assert changed >= 70  # jitter with p = 0.8, or grayscale, alters the red channel


@pytest.mark.parametrize(
    ("album", "steps"),
    [
        ("Geom", ["Affine", "RandomResizedCrop", "HorizontalFlip", "CoarseDropout", "Blur"]),
        (
            "GeomColor",
            ["RandomResizedCrop", "RandomBrightnessContrast", "HorizontalFlip", "Affine", "CoarseDropout", "Blur"],
        ),
    ],
)
def test_albumentations_families_follow_the_specified_order_and_parameters(album, steps):
    pipeline = build_train_transform(album, 256, 224, "cub").pipeline
    assert [type(step).__name__ for step in pipeline.transforms] == steps
    by_name = {type(step).__name__: step for step in pipeline.transforms}
    affine = by_name["Affine"]
    assert affine.p == 0.5 and affine.rotate == (-45.0, 45.0) and affine.border_mode == cv2.BORDER_REFLECT_101
    assert affine.translate_percent == {"x": (-0.0625, 0.0625), "y": (-0.0625, 0.0625)}
    assert affine.scale == {"x": (1.0, 1.0), "y": (1.0, 1.0)}
    dropout = by_name["CoarseDropout"]
    assert dropout.p == 0.5 and dropout.num_holes_range == (1, 5) and dropout.fill == 0
    assert dropout.hole_height_range == (40, 40) and dropout.hole_width_range == (40, 40)
    assert by_name["Blur"].blur_limit == (3, 7) and by_name["Blur"].p == 0.5
    assert by_name["RandomResizedCrop"].size == (224, 224) and by_name["RandomResizedCrop"].scale == (0.08, 1.0)


@pytest.mark.parametrize("album", FAMILIES)
def test_transforms_survive_pickling_for_spawned_loader_workers(album):
    transform = build_train_transform(album, 72, 64, "cub")
    copy = pickle.loads(pickle.dumps(transform))
    image = photo()
    assert torch.equal(transform(image, np.random.default_rng(3)), copy(image, np.random.default_rng(3)))


@pytest.mark.parametrize("album", ["Geom", "GeomColor"])
def test_small_crops_get_proportionally_smaller_dropout_holes(album):
    small = build_train_transform(album, 32, 32, "glyphs")
    dropout = next(step for step in small.pipeline.transforms if type(step).__name__ == "CoarseDropout")
    assert dropout.hole_height_range == (6, 6)  # round(40 * 32 / 224)
    glyph = np.full((32, 32), 255, dtype=np.uint8)
    glyph[8:24, 12:20] = 0
    outputs = [small(glyph, np.random.default_rng(seed)) for seed in range(20)]
    assert all(out.shape == (3, 32, 32) for out in outputs)
    large = build_train_transform(album, 300, 288, "cub").pipeline.transforms
    assert next(s for s in large if type(s).__name__ == "CoarseDropout").hole_width_range == (40, 40)
