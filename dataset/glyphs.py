"""The built-in ``glyphs`` dataset (METHOD.md §12): characters rendered in matplotlib's bundled fonts.

It needs no download and is deterministic, so demos and tests can train and evaluate a real retrieval model
offline. A class is a character; its images are the 16 faces × ``renders`` jittered renderings. Every image
is a pure function of (code point, face, render): it never depends on how many classes are kept or on the
order of generation, so ``--glyphs-classes 20`` images are exactly those of the full dataset.
"""

import functools
import hashlib
import json
import os
import zipfile

import cv2
import matplotlib
import numpy as np
from matplotlib import ft2font

from dataset.base import LoadedDataset, Split
from lib.atomic import atomic_write
from lib.errors import ConfigError
from lib.seeding import numpy_generator

GLYPHS_SEED = 20210909
FACE_FILES = tuple(
    sorted(
        [
            "DejaVuSans.ttf",
            "DejaVuSans-Bold.ttf",
            "DejaVuSans-Oblique.ttf",
            "DejaVuSans-BoldOblique.ttf",
            "DejaVuSansMono.ttf",
            "DejaVuSansMono-Bold.ttf",
            "DejaVuSansMono-Oblique.ttf",
            "DejaVuSansMono-BoldOblique.ttf",
            "DejaVuSerif.ttf",
            "DejaVuSerif-Bold.ttf",
            "DejaVuSerif-Italic.ttf",
            "DejaVuSerif-BoldItalic.ttf",
            "STIXGeneral.ttf",
            "STIXGeneralBol.ttf",
            "STIXGeneralItalic.ttf",
            "STIXGeneralBolIta.ttf",
        ]
    )
)
MAX_ROTATION_DEG = 10.0
MAX_SHIFT = 0.1  # fraction of the side, per axis
FIT = 0.75  # the ink's longer side spans this fraction of the image, leaving room for the jitter
REFERENCE_PX = 32.0  # em size of the measuring render that also decides whether a glyph has ink
SUPERSAMPLED_PX = 64  # images are warped at about this size, then box-filtered down to ``size``
ALGORITHM_VERSION = 1  # bump when a change alters the pixels, so that stale cache files are not reused
LAYOUT = "generated from the TrueType fonts bundled with matplotlib (METHOD.md §12); no files needed"
MIN_SIZE, MAX_SIZE = 8, 512  # --glyphs-size: a legible character; a demo set kept in memory

_memory_cache: dict[str, tuple[tuple[int, ...], np.ndarray]] = {}


def font_dir() -> str:
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def library_versions() -> dict[str, str]:
    """What the pixels depend on besides the parameters: the rasteriser and the resampling code."""
    return {
        "matplotlib": matplotlib.__version__,
        "freetype": ft2font.__freetype_version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "glyphs_algorithm": str(ALGORITHM_VERSION),
    }


def _render_ink(font: ft2font.FT2Font, char: str, em_px: float) -> np.ndarray:
    """Anti-aliased ink coverage (0 = none) of one character; unhinted, so shapes scale faithfully."""
    font.set_size(em_px, 72)  # points at 72 dpi are pixels
    font.set_text(char, flags=ft2font.LoadFlags.NO_HINTING)
    font.draw_glyphs_to_bitmap(antialiased=True)
    return np.asarray(font.get_image())


def _ink_box(ink: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the inked pixels, inclusive; None if the glyph is blank."""
    rows = np.flatnonzero(ink.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(ink.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _open_faces() -> list[ft2font.FT2Font]:
    return [ft2font.FT2Font(os.path.join(font_dir(), name)) for name in FACE_FILES]


@functools.lru_cache(maxsize=1)
def _catalogue() -> tuple[tuple[int, ...], dict[int, tuple[int, ...]]]:
    """The permuted class list and, per class, the longer ink side of each face at ``REFERENCE_PX``."""
    faces = _open_faces()
    mapped = set.intersection(*(set(face.get_charmap()) for face in faces))
    candidates = [c for c in sorted(mapped) if chr(c).isprintable() and not chr(c).isspace()]
    ink_sides: dict[int, tuple[int, ...]] = {}
    for code in candidates:
        sides = []
        for face in faces:
            box = _ink_box(_render_ink(face, chr(code), REFERENCE_PX))
            if box is None:
                break
            sides.append(max(box[2] - box[0], box[3] - box[1]) + 1)
        else:
            ink_sides[code] = tuple(sides)
    classes = sorted(ink_sides)
    order = np.random.default_rng(GLYPHS_SEED).permutation(len(classes))
    return tuple(classes[i] for i in order), ink_sides


def glyph_class_order() -> list[int]:
    """All classes (code points) in the fixed permuted order of §12; independent of any flag or seed."""
    return list(_catalogue()[0])


def class_name(code: int) -> str:
    return f"U+{code:04X} {chr(code)}"


def _place(ink: np.ndarray, box: tuple[int, int, int, int], size: int, jitter: np.ndarray) -> np.ndarray:
    """Scale the ink to fit, centre it on its ink box, rotate and shift it; dark glyph on light ground.

    ``jitter`` holds three numbers in [-1, 1): rotation, horizontal and vertical shift.
    """
    x0, y0, x1, y1 = box
    factor = max(1, SUPERSAMPLED_PX // size)
    canvas = size * factor
    scale = FIT * canvas / (max(x1 - x0, y1 - y0) + 1)
    centre = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, float(jitter[0]) * MAX_ROTATION_DEG, scale)
    matrix[0, 2] += (canvas - 1) / 2.0 - centre[0] + float(jitter[1]) * MAX_SHIFT * canvas
    matrix[1, 2] += (canvas - 1) / 2.0 - centre[1] + float(jitter[2]) * MAX_SHIFT * canvas
    warped = cv2.warpAffine(ink, matrix, (canvas, canvas), flags=cv2.INTER_LINEAR, borderValue=0)
    if factor > 1:
        warped = cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)
    return 255 - warped


def render_class(code: int, renders: int, size: int, faces: list[ft2font.FT2Font] | None = None) -> np.ndarray:
    """The (16 × renders, size, size) uint8 images of one class, face-major; a function of its arguments only.

    The jitter of (face f, render r) is entry [r, f] of one stream keyed by the code point, filled render by
    render: it is the same whatever ``renders`` is, and one generator per class is cheap.
    """
    faces = faces if faces is not None else _open_faces()
    ink_sides = _catalogue()[1][code]
    factor = max(1, SUPERSAMPLED_PX // size)
    jitter = numpy_generator(GLYPHS_SEED, code).uniform(-1.0, 1.0, size=(renders, len(faces), 3))
    images = np.empty((len(faces) * renders, size, size), dtype=np.uint8)
    for f, (face, side) in enumerate(zip(faces, ink_sides, strict=True)):
        # Re-render near the final scale, so that the warp below barely resamples the glyph.
        ink = _render_ink(face, chr(code), REFERENCE_PX * FIT * size * factor / side)
        box = _ink_box(ink)
        for r in range(renders):
            images[f * renders + r] = _place(ink, box, size, jitter[r, f])
    return images


def _validate(n_classes: int, renders: int, size: int) -> None:
    if n_classes < 0 or 0 < n_classes < 4:
        raise ConfigError(
            f"--glyphs-classes {n_classes}: choose 0 (all classes) or at least 4, "
            "so that the train and eval halves hold at least 2 classes each"
        )
    if renders < 1:
        raise ConfigError(f"--glyphs-renders {renders}: need at least 1 render per class and face")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(
            f"--glyphs-size {size}: choose {MIN_SIZE} (a legible character) to {MAX_SIZE} pixels; the built-in "
            "dataset is held in memory (larger images belong in --dataset folder)"
        )


def _cache_key(n_classes: int, renders: int, size: int) -> str:
    blob = json.dumps({"n_classes": n_classes, "renders": renders, "size": size, **library_versions()}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _read_cache(path: str, n_classes: int, renders: int, size: int) -> tuple[tuple[int, ...], np.ndarray] | None:
    """The cached (codes, images), or None if the file is absent, truncated or not what its name promises."""
    try:
        with np.load(path, allow_pickle=False) as data:
            codes, images = data["codes"], data["images"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    n_images = codes.size * len(FACE_FILES) * renders
    if codes.ndim != 1 or (n_classes and codes.size != n_classes) or images.dtype != np.uint8:
        return None
    return (tuple(int(c) for c in codes), images) if images.shape == (n_images, size, size) else None


def _generate(n_classes: int, renders: int, size: int) -> tuple[tuple[int, ...], np.ndarray]:
    order = _catalogue()[0]
    if n_classes > len(order):
        raise ConfigError(f"--glyphs-classes {n_classes}: only {len(order)} classes exist; choose at most that, or 0")
    codes = order[: n_classes or len(order)]
    faces = _open_faces()
    return codes, np.concatenate([render_class(code, renders, size, faces) for code in codes])


def _codes_and_images(
    n_classes: int, renders: int, size: int, cache_dir: str | None
) -> tuple[tuple[int, ...], np.ndarray, str | None, list[str]]:
    """The kept classes and their images (class-major), from memory, the cache file, or freshly rendered.

    A cache hit skips even the class catalogue, which renders every candidate character in every face.
    """
    key = _cache_key(n_classes, renders, size)
    path = None if cache_dir is None else os.path.join(cache_dir, f"glyphs-n{n_classes}-r{renders}-s{size}-{key}.npz")
    warnings: list[str] = []
    cached = _memory_cache.get(key)
    if cached is None and path is not None:
        cached = _read_cache(path, n_classes, renders, size)
    if cached is None:
        cached = _generate(n_classes, renders, size)
        codes, images = cached
        if path is not None:
            try:
                atomic_write(path, lambda handle: np.savez(handle, images=images, codes=np.asarray(codes)))
            except OSError as error:
                warnings.append(f"glyphs: could not write the cache file {path} ({error}); images stay in memory")
    cached[1].setflags(write=False)
    _memory_cache[key] = cached
    return *cached, path, warnings


def load_glyphs(n_classes: int = 0, renders: int = 2, size: int = 32, cache_dir: str | None = None) -> LoadedDataset:
    """Splits ``train`` (first ⌊N/2⌋ classes of the permuted order) and ``eval`` (the rest) of (size, size) images.

    ``n_classes`` = 0 keeps every class. Labels are 0 … within each split; images are class-major, then face,
    then render. ``info`` records the classes, fonts and library versions, since they fix the pixels.
    """
    _validate(n_classes, renders, size)
    codes, images, path, warnings = _codes_and_images(n_classes, renders, size, cache_dir)
    per_class = len(FACE_FILES) * renders
    n_train = len(codes) // 2
    splits = {}
    for name, lo, hi in (("train", 0, n_train), ("eval", n_train, len(codes))):
        splits[name] = Split(
            name=name,
            images=images[lo * per_class : hi * per_class],
            labels=np.repeat(np.arange(hi - lo, dtype=np.int64), per_class),
            class_names=tuple(class_name(code) for code in codes[lo:hi]),
        )
    info = {
        "classes": list(codes),
        "train_classes": list(codes[:n_train]),
        "eval_classes": list(codes[n_train:]),
        "fonts": list(FACE_FILES),
        "renders": renders,
        "size": size,
        "versions": library_versions(),
        "cache_file": path,
    }
    root = os.path.abspath(cache_dir) if cache_dir is not None else "(generated in memory)"
    return LoadedDataset(name="glyphs", root=root, splits=splits, warnings=warnings, layout=LAYOUT, info=info)
