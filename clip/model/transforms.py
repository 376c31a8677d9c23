"""OpenAI CLIP's evaluation preprocessing, and SigLIP's, reproduced without torchvision.

OpenAI's pipeline is torchvision `Resize(n, BICUBIC) -> CenterCrop(n) -> convert("RGB") -> ToTensor ->
Normalize` on a PIL image. torchvision resizes PIL images with PIL itself, so the same PIL call plus
torchvision's size and crop arithmetic gives identical pixels. The order is kept too: resizing happens
in the image's own mode (palette and 1-bit images resize with nearest neighbour, RGBA with
premultiplied alpha, grey in 8-bit grey) before the RGB conversion, as in OpenAI's pipeline.

SigLIP's weights expect open_clip's `resize_mode: squash` instead: torchvision `Resize((n, n), BICUBIC)`, the
whole image squashed to the square whatever its aspect ratio (no crop), then mean = std = 0.5. Which one a model
gets is part of its architecture (`CLIPConfig.preprocess`), so training, evaluation and prediction agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from PIL import Image

from launcher.errors import UserError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # open_clip's INCEPTION_MEAN / INCEPTION_STD
# CLIPConfig.preprocess -> (mean, std, resize mode)
PREPROCESSING = {"openai": (OPENAI_MEAN, OPENAI_STD, "shortest"), "siglip": (SIGLIP_MEAN, SIGLIP_STD, "squash")}


def resized_size(width: int, height: int, size: int) -> Tuple[int, int]:
    """(width, height) after torchvision's Resize(size): shorter side -> size, longer side
    int(size * long / short) (truncated, not rounded)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> Tuple[int, int, int, int]:
    """PIL crop box of torchvision's CenterCrop(size): offsets int(round((dim - size) / 2))."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def normalize(rgb: np.ndarray, mean=OPENAI_MEAN, std=OPENAI_STD) -> np.ndarray:
    """uint8 [H,W,3] -> float32 [3,H,W]: /255 then (x - mean) / std, every step in float32
    as torchvision's ToTensor and Normalize compute it."""
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std


# JPEGs of more pixels than this are decoded at 1/2, 1/4 or 1/8 scale (PIL draft, in the DCT), keeping at least
# DRAFT_MIN_SIDE pixels on each side: twice the largest preset's input (336), so every output pixel still comes from
# several source pixels. Photos up to 24 MP decode in full, exactly as OpenAI's pipeline decodes them.
DRAFT_MIN_PIXELS = 24_000_000
DRAFT_MIN_SIDE = 2 * 336


def reduce_while_decoding(image: Image.Image) -> Image.Image:
    """Call on a freshly opened, not yet loaded image: a huge JPEG then costs memory by the model's input size,
    not by its pixel count."""
    if image.format == "JPEG" and image.width * image.height > DRAFT_MIN_PIXELS:
        image.draft(image.mode, (DRAFT_MIN_SIDE, DRAFT_MIN_SIDE))
    return image


# Images whose resized size has more than this many times the crop's pixels (aspect ratio beyond 64:1 at any
# size) are resized only where the crop will be; up to it the full resize is done, as OpenAI does, at most
# 64 x the crop's memory (38 MB at 384 px).
ELONGATED = 64
PILLOW_MAJOR = int(Image.__version__.split(".")[0])


def vertical_first(in_size: Tuple[int, int], out_size: Tuple[int, int]) -> bool:
    """Which pass Pillow runs first in one resize: from Pillow 13 the vertical one when the height shrinks by more
    than twice what the width does, before that always the horizontal one. Rounding to 8 bits between the passes
    makes the order visible, so the bounded path must follow the order of the full resize it stands for."""
    (width, height), (out_width, out_height) = in_size, out_size
    return PILLOW_MAJOR >= 13 and height - out_height > 0 and height - out_height > (width - out_width) * 2


def source_span(start: float, end: float, scale: float, length: int) -> Tuple[int, int]:
    """Source pixels that bicubic resampling of [start, end) reads along one axis (PIL's window: 2 pixels of
    support, widened by the scale when shrinking), plus one of margin, clipped to the image."""
    support = 2.0 * max(scale, 1.0)
    return max(0, int(start - support) - 1), min(length, int(end + support) + 2)


def resize_crop(image: Image.Image, new_size: Tuple[int, int], size: int) -> Image.Image:
    """Resize(new_size) then CenterCrop(size) without the resized image: one PIL resize with a source box, the
    crop window mapped back through the scale, on just the source pixels that window reads, so a 1 x 100000
    image costs memory by the output size. Pillow takes box coordinates as float32, so the filter weights can
    differ from the full resize's in the last bits: see docs/model.md for what that changes (tests/
    test_image_memory.py measures it). When that one call would run its two passes in the other order than
    the full resize, it is done as two one-axis calls in the full resize's order."""
    left, top, right, bottom = center_crop_box(new_size[0], new_size[1], size)
    if new_size == image.size:
        return image.crop((left, top, right, bottom))
    sx, sy = image.width / new_size[0], image.height / new_size[1]
    x0, x1 = source_span(left * sx, right * sx, sx, image.width)
    y0, y1 = source_span(top * sy, bottom * sy, sy, image.height)
    region = image.crop((x0, y0, x1, y1))  # copies only these pixels; coordinates small, so float32 is closer
    box = (left * sx - x0, top * sy - y0, right * sx - x0, bottom * sy - y0)
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(region.mode)
    if premultiplied:  # resize() would premultiply per call; once, as in one full resize
        region = region.convert(premultiplied)
    first_vertical = vertical_first(image.size, new_size)
    bicubic = Image.Resampling.BICUBIC
    if vertical_first(region.size, (size, size)) == first_vertical:
        out = region.resize((size, size), bicubic, box=box)
    elif first_vertical:
        out = region.resize((region.width, size), bicubic, box=(0, box[1], region.width, box[3]))
        out = out.resize((size, size), bicubic, box=(box[0], 0, box[2], size))
    else:
        out = region.resize((size, region.height), bicubic, box=(box[0], 0, box[2], region.height))
        out = out.resize((size, size), bicubic, box=(0, box[1], size, box[3]))
    return out.convert({"RGBa": "RGBA", "La": "LA"}[out.mode]) if premultiplied else out


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float32 [3, image_size, image_size]; a picklable callable so that data-loader
    worker processes can use it."""

    image_size: int
    preprocess: str = "openai"

    def __call__(self, image: Image.Image) -> np.ndarray:
        if not isinstance(image, Image.Image):
            raise UserError(f"image_transform: got {type(image).__name__}, expected a PIL.Image.Image")
        size = self.image_size
        mean, std, resize_mode = PREPROCESSING[self.preprocess]
        if resize_mode == "squash":  # one resize to the square: memory by the output size at any aspect ratio
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            return normalize(np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8),
                             mean, std)
        new_size = resized_size(image.width, image.height, size)
        if new_size[0] * new_size[1] > ELONGATED * size * size:
            image = resize_crop(image, new_size, size)
        else:
            if new_size != image.size:
                image = image.resize(new_size, Image.Resampling.BICUBIC)
            image = image.crop(center_crop_box(image.width, image.height, size))
        if image.mode != "RGB":
            image = image.convert("RGB")
        return normalize(np.asarray(image, dtype=np.uint8))


def image_transform(image_size: int, preprocess: str = "openai") -> ImageTransform:
    """The preprocessing of family `preprocess` (a model's `config.preprocess`: OpenAI's by default) for a
    model with input resolution `image_size`."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise UserError(f"image_transform: image_size={image_size!r}, expected a positive integer")
    if preprocess not in PREPROCESSING:
        raise UserError(f"image_transform: preprocess={preprocess!r}, expected one of {', '.join(PREPROCESSING)}")
    return ImageTransform(int(image_size), preprocess)
