import os

import numpy as np
import pytest
from matplotlib import ft2font

from dataset import glyphs
from dataset.glyphs import FACE_FILES, glyph_class_order, load_glyphs
from lib.errors import ConfigError


@pytest.fixture
def fresh_memory(monkeypatch):
    """An empty in-process image cache, so that a load really renders (or reads the disk cache)."""
    monkeypatch.setattr(glyphs, "_memory_cache", {})


def test_faces_are_the_sixteen_named_files_in_name_order():
    assert len(FACE_FILES) == 16
    assert list(FACE_FILES) == sorted(FACE_FILES)
    assert FACE_FILES[0] == "DejaVuSans-Bold.ttf" and FACE_FILES[-1] == "STIXGeneralItalic.ttf"
    assert not any("Display" in name or "NonUni" in name or "Siz" in name for name in FACE_FILES)
    assert all(os.path.isfile(os.path.join(glyphs.font_dir(), name)) for name in FACE_FILES)


def test_class_order_is_the_fixed_permutation_of_the_sorted_eligible_characters():
    order = glyph_class_order()
    assert 600 <= len(order) <= 800
    assert len(set(order)) == len(order)
    ordered = sorted(order)
    permutation = np.random.default_rng(20210909).permutation(len(ordered))
    assert order == [ordered[i] for i in permutation]
    assert glyph_class_order() == order


def test_every_class_is_printable_and_mapped_by_every_face():
    order = glyph_class_order()
    assert all(chr(c).isprintable() and not chr(c).isspace() for c in order)
    for name in FACE_FILES:
        charmap = ft2font.FT2Font(os.path.join(glyphs.font_dir(), name)).get_charmap()
        assert all(c in charmap for c in order)
    assert ord("A") in order and ord(" ") not in order


def test_counts_labels_and_class_split(fresh_memory):
    data = load_glyphs(n_classes=9, renders=2, size=32)
    order = glyph_class_order()
    train, evaluation = data.splits["train"], data.splits["eval"]
    assert (len(train), len(evaluation)) == (4 * 16 * 2, 5 * 16 * 2)
    assert train.class_names == tuple(f"U+{c:04X} {chr(c)}" for c in order[:4])
    assert evaluation.class_names[0] == f"U+{order[4]:04X} {chr(order[4])}"
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(4), 32))
    np.testing.assert_array_equal(evaluation.labels, np.repeat(np.arange(5), 32))
    assert data.info["classes"] == order[:9]
    assert data.info["train_classes"] == order[:4] and data.info["eval_classes"] == order[4:9]
    assert data.info["fonts"] == list(FACE_FILES)
    assert {"matplotlib", "freetype"} <= set(data.info["versions"])
    image = train.images[0]
    assert image.shape == (32, 32) and image.dtype == np.uint8


def test_images_are_dark_ink_on_light_ground_and_distinct(fresh_memory):
    images = np.asarray(load_glyphs(n_classes=6, renders=2, size=32).splits["train"].images)
    assert images.min(axis=(1, 2)).max() < 100  # every image has dark ink
    assert (np.median(images, axis=(1, 2)) > 200).all()  # on a light background
    assert (images[:, 0, :] > 200).mean() > 0.9  # the glyph is centred, the top row mostly clear
    flat = images.reshape(len(images), -1)
    assert len(np.unique(flat, axis=0)) == len(images)  # faces and renders all differ


def test_images_do_not_depend_on_class_count_or_render_count(fresh_memory):
    small = load_glyphs(n_classes=20, renders=2, size=32)
    large = load_glyphs(n_classes=40, renders=2, size=32)
    one_render = load_glyphs(n_classes=20, renders=1, size=32)
    large_train = np.asarray(large.splits["train"].images)
    np.testing.assert_array_equal(np.asarray(small.splits["train"].images), large_train[: 10 * 32])
    np.testing.assert_array_equal(np.asarray(small.splits["eval"].images), large_train[10 * 32 : 20 * 32])
    first_render = np.asarray(small.splits["train"].images).reshape(10, 16, 2, 32, 32)[:, :, 0]
    np.testing.assert_array_equal(np.asarray(one_render.splits["train"].images).reshape(10, 16, 32, 32), first_render)


def test_same_parameters_give_identical_images(monkeypatch):
    monkeypatch.setattr(glyphs, "_memory_cache", {})
    first = np.array(load_glyphs(n_classes=4, renders=1, size=24).splits["eval"].images)
    monkeypatch.setattr(glyphs, "_memory_cache", {})
    second = np.array(load_glyphs(n_classes=4, renders=1, size=24).splits["eval"].images)
    assert first.shape == (2 * 16, 24, 24)
    np.testing.assert_array_equal(first, second)


def test_disk_cache_is_reused_and_a_corrupt_file_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setattr(glyphs, "_memory_cache", {})
    fresh = np.array(load_glyphs(n_classes=4, renders=1, size=16, cache_dir=str(tmp_path)).splits["train"].images)
    (cache_file,) = tmp_path.glob("glyphs-*.npz")

    def no_rendering(*args):
        raise AssertionError("the cache file should have been used")

    monkeypatch.setattr(glyphs, "_memory_cache", {})
    monkeypatch.setattr(glyphs, "_generate", no_rendering)
    cached = load_glyphs(n_classes=4, renders=1, size=16, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(np.asarray(cached.splits["train"].images), fresh)
    assert cached.info["classes"] == glyph_class_order()[:4]

    monkeypatch.undo()
    monkeypatch.setattr(glyphs, "_memory_cache", {})
    cache_file.write_bytes(b"truncated")
    repaired = load_glyphs(n_classes=4, renders=1, size=16, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(np.asarray(repaired.splits["train"].images), fresh)
    assert cache_file.stat().st_size > 1000


@pytest.mark.parametrize(
    "kwargs",
    [{"n_classes": 2}, {"n_classes": -1}, {"n_classes": 10**6}, {"renders": 0}, {"size": 7}, {"size": 30_000}],
)
def test_impossible_parameters_are_config_errors(kwargs, fresh_memory):
    with pytest.raises(ConfigError, match="--glyphs-"):
        load_glyphs(**kwargs)
