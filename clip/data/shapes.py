"""Synthetic "shapes" dataset: coloured shapes on a plain background, generated from a seed, no files.

Made to be learnable by the tiny CLIP on CPU in minutes: few, large, saturated shapes on a neutral
background, one class per (colour, shape) pair. Sample i of a split depends only on (seed, split, i).
"""
from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageDraw

from clip.data.base import CaptionSource, ClassificationSource, DatasetConfig, check_templates
from launcher.errors import UserError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": (16, 20), "large": (23, 28)}  # half-extent range in pixels at 64 px
IMAGE_SIZE = 64
SPLITS = {"train": 0, "val": 1, "eval": 1, "test": 2}  # "eval" is another name for "val"

CLASSNAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
TEMPLATES = ["a photo of a {}.", "a {}.", "a drawing of a {}.", "a picture of the {}.", "a {} shape."]

_CAPTIONS = (
    "a photo of a {size} {colour} {shape}.",
    "a {colour} {shape}.",
    "a {size} {colour} {shape} on the {place}.",
    "a drawing of a {colour} {shape} on a grey background.",
    "there is a {colour} {shape} at the {place} of the picture.",
)


def _place(cx: float, cy: float) -> str:
    """Coarse words for where the shape's centre lies."""
    v = "top" if cy < IMAGE_SIZE * 0.4 else "bottom" if cy > IMAGE_SIZE * 0.6 else ""
    h = "left" if cx < IMAGE_SIZE * 0.4 else "right" if cx > IMAGE_SIZE * 0.6 else ""
    return f"{v} {h}".strip() or "centre"


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of the non-circle shapes."""
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    w = r * 0.4  # cross: plus sign of arm half-width w
    return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
            (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
            (cx - r, cy - w), (cx - w, cy - w)]


def _layout(rng: np.random.Generator, i: int) -> dict:
    """Class and geometry of sample i: the first draws of its generator, enough for the captions."""
    label = i % len(CLASSNAMES)
    size = ("small", "large")[int(rng.integers(2))]
    r = float(rng.uniform(*SIZES[size]))
    cx, cy = (float(v) for v in rng.uniform(r + 1, IMAGE_SIZE - r - 1, size=2))
    return {"label": label, "colour": list(COLOURS)[label // len(SHAPES)], "shape": SHAPES[label % len(SHAPES)],
            "size": size, "r": r, "cx": cx, "cy": cy}


def _captions(s: dict) -> list[str]:
    words = {"size": s["size"], "colour": s["colour"], "shape": s["shape"], "place": _place(s["cx"], s["cy"])}
    return [re.sub(r"\ba (?=[aeiou])", "an ", c.format(**words)) for c in _CAPTIONS]


def describe(seed: int, split: str, i: int) -> tuple[int, list[str]]:
    """(class label, captions) of sample i without drawing it."""
    s = _layout(np.random.default_rng((seed, SPLITS[split], i)), i)
    return s["label"], _captions(s)


def render(seed: int, split: str, i: int) -> tuple[Image.Image, int, list[str]]:
    """Sample i: (image, class label, captions); class = i mod the number of classes, so splits are balanced."""
    rng = np.random.default_rng((seed, SPLITS[split], i))
    s = _layout(rng, i)
    grey = int(rng.integers(100, 160))
    noise = rng.integers(-12, 13, size=(IMAGE_SIZE, IMAGE_SIZE, 1))
    img = Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8).repeat(3, axis=2))
    fill = tuple(int(c) for c in np.clip(np.array(COLOURS[s["colour"]]) + rng.integers(-15, 16, 3), 0, 255))
    draw = ImageDraw.Draw(img)
    r, cx, cy = s["r"], s["cx"], s["cy"]
    if s["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_outline(s["shape"], cx, cy, r), fill=fill)
    return img, s["label"], _captions(s)


def _check(cfg: DatasetConfig) -> None:
    if cfg.split not in SPLITS:
        raise UserError(f"data.split: {cfg.split!r} is not a shapes split (expected one of {', '.join(SPLITS)})")
    if cfg.num_samples < 1:
        raise UserError(f"data.num_samples: {cfg.num_samples} must be a positive number of samples")


class ShapesCaptions(CaptionSource):
    """Image-caption view of the synthetic shapes: five phrasings per image."""

    def __init__(self, seed: int, split: str, num_samples: int):
        self.seed, self.split, self.num_samples = seed, split, num_samples

    def __len__(self) -> int:
        return self.num_samples

    def captions(self, i: int) -> list[str]:
        return describe(self.seed, self.split, i)[1]

    def image(self, i: int) -> Image.Image:
        return render(self.seed, self.split, i)[0]

    def __getitem__(self, i: int) -> tuple[Image.Image, list[str]]:
        img, _, caps = render(self.seed, self.split, i)
        return img, caps

    def name(self, i: int) -> str:
        return f"shapes/{self.split}/{i}"


class ShapesClasses(ClassificationSource):
    """Labelled view of the synthetic shapes for zero-shot: class names like "red circle"."""

    def __init__(self, seed: int, split: str, num_samples: int, templates: list[str]):
        self.seed, self.split, self.num_samples = seed, split, num_samples
        self.classnames = list(CLASSNAMES)
        self.templates = list(templates)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        img, label, _ = render(self.seed, self.split, i)
        return img, label

    def name(self, i: int) -> str:
        return f"shapes/{self.split}/{i}"


def load(cfg: DatasetConfig) -> ShapesCaptions:
    """Training (or retrieval) source."""
    _check(cfg)
    return ShapesCaptions(cfg.seed, cfg.split, cfg.num_samples)


def load_eval(cfg: DatasetConfig) -> ShapesClasses:
    """Zero-shot source; the same seed and split give the same images as load()."""
    _check(cfg)
    return ShapesClasses(cfg.seed, cfg.split, cfg.num_samples, check_templates(cfg.templates or TEMPLATES))
