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

from common.errors import UserError

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
