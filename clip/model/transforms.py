"""OpenAI CLIP's evaluation preprocessing, reproduced without torchvision.

OpenAI's pipeline is torchvision `Resize(n, BICUBIC) -> CenterCrop(n) -> convert("RGB") -> ToTensor ->
Normalize` on a PIL image. torchvision resizes PIL images with PIL itself, so the same PIL call plus
torchvision's size and crop arithmetic gives identical pixels. The order is kept too: resizing happens
in the image's own mode (palette and 1-bit images resize with nearest neighbour, RGBA with
premultiplied alpha, grey in 8-bit grey) before the RGB conversion, as in OpenAI's pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from PIL import Image

from launcher.errors import UserError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


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


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3] -> float32 [3,H,W]: /255 then (x - mean) / std, every step in float32
    as torchvision's ToTensor and Normalize compute it."""
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)
    mean = np.asarray(OPENAI_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(OPENAI_STD, dtype=np.float32).reshape(3, 1, 1)
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


# Beyond this ratio of resized area to crop area the image is resized only where the crop will be.
ELONGATED = 4


def resize_crop(image: Image.Image, new_size: Tuple[int, int], size: int) -> Image.Image:
    """Resize(new_size) then CenterCrop(size), computed one axis at a time on just the source region the crop
    needs, so that a 1 x 100000 image costs memory by the output size, not by its resized size. PIL resizes
    horizontally, then vertically, and a box on one axis reads the same pixels around it as a full pass: the
    result equals resize-then-crop (up to rounding of the box coordinates: at most 1 level, rarely)."""
    left, top, right, bottom = center_crop_box(new_size[0], new_size[1], size)
    if new_size == image.size:
        return image.crop((left, top, right, bottom))
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(image.mode)
    if premultiplied:  # resize() would premultiply per call; once for both passes, as in one full resize
        image = image.convert(premultiplied)
    if new_size[0] != image.width:
        sx = image.width / new_size[0]
        image = image.resize((size, image.height), Image.Resampling.BICUBIC,
                             box=(left * sx, 0, right * sx, image.height))
    else:
        image = image.crop((left, 0, right, image.height))
    if new_size[1] != image.height:
        sy = image.height / new_size[1]
        image = image.resize((size, size), Image.Resampling.BICUBIC, box=(0, top * sy, size, bottom * sy))
    else:
        image = image.crop((0, top, size, bottom))
    return image.convert({"RGBa": "RGBA", "La": "LA"}[image.mode]) if premultiplied else image


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float32 [3, image_size, image_size]; a picklable callable so that data-loader
    worker processes can use it."""

    image_size: int

    def __call__(self, image: Image.Image) -> np.ndarray:
        if not isinstance(image, Image.Image):
            raise UserError(f"image_transform: got {type(image).__name__}, expected a PIL.Image.Image")
        size = self.image_size
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


def image_transform(image_size: int) -> ImageTransform:
    """OpenAI's preprocessing for a model with input resolution `image_size`."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise UserError(f"image_transform: image_size={image_size!r}, expected a positive integer")
    return ImageTransform(int(image_size))
