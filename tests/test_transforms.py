"""Preprocessing equals OpenAI's torchvision pipeline within 1e-6 per value.

The reference is written here independently of clip/transforms.py: torchvision's Resize on a PIL
image is PIL's BICUBIC resize in the image's own mode, then the RGB conversion, then the pixels go
to torch where the center crop is a tensor slice, ToTensor a division by 255 and Normalize a
subtract/divide with float32 mean and std tensors (torchvision itself cannot be installed here).
"""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import clip
from clip.model.transforms import OPENAI_MEAN, OPENAI_STD, center_crop_box, image_transform, resized_size
from launcher.errors import UserError


def openai_reference(image: Image.Image, n: int) -> np.ndarray:
    w, h = image.size
    short, long = min(w, h), max(w, h)
    target = (n, int(n * long / short)) if w <= h else (int(n * long / short), n)
    if target != (w, h):
        image = image.resize(target, resample=Image.BICUBIC)
    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8, copy=True)).permute(2, 0, 1)
    _, th, tw = pixels.shape
    top, left = int(round((th - n) / 2.0)), int(round((tw - n) / 2.0))
    crop = pixels[:, top:top + n, left:left + n].to(torch.float32).div(255)
    mean = torch.tensor(OPENAI_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(OPENAI_STD, dtype=torch.float32)[:, None, None]
    return crop.sub(mean).div(std).numpy()


def make_image(mode: str, size, seed: int) -> Image.Image:
    """A random-content image of the given PIL mode (smooth gradient + noise, so resizing matters)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], -1)
    rgb = np.clip(base + rng.integers(-40, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode == "RGB":
        return image
    if mode == "P":
        return image.quantize(colors=37)
    if mode == "RGBA":
        alpha = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        return Image.fromarray(np.dstack([rgb, alpha]))
    if mode == "I;16":
        return Image.fromarray((rgb[..., 0].astype(np.uint16) * 3).astype(np.uint16))
    if mode == "F":
        return Image.fromarray(rgb[..., 1].astype(np.float32) * 0.9)
    return image.convert(mode)


MODES = ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "1", "LA", "I", "F", "YCbCr"]
SIZES = [(224, 224), (300, 200), (200, 300), (225, 224), (640, 480), (50, 40), (7, 50), (333, 999)]


@pytest.mark.parametrize("mode", MODES)
def test_matches_openai_pipeline_across_modes(mode):
    transform = image_transform(224)
    for k, size in enumerate(SIZES):
        image = make_image(mode, size, seed=k)
        assert image.mode == mode
        ours = transform(image)
        assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
        np.testing.assert_allclose(ours, openai_reference(image, 224), rtol=0, atol=1e-6,
                                   err_msg=f"{mode} {size}")


@pytest.mark.parametrize("n", [64, 336])
def test_matches_openai_pipeline_other_resolutions(n):
    transform = clip.image_transform(n)
    for k, size in enumerate([(n, n), (n + 1, n + 3), (500, 375), (31, 97)]):
        image = make_image("RGB", size, seed=100 + k)
        ours = transform(image)
        assert ours.shape == (3, n, n)
        np.testing.assert_allclose(ours, openai_reference(image, n), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [224, 256, 336, 384])
def test_far_from_square_images_match_openai_pipeline(n):
    """1000 x 31 and 31 x 1000 (aspect 32:1, once 1 to 2 levels off): still resized in full, so bit-identical."""
    transform = clip.image_transform(n)
    for k, size in enumerate([(1000, 31), (31, 1000)]):
        image = make_image("RGB", size, seed=200 + k)
        np.testing.assert_allclose(transform(image), openai_reference(image, n), rtol=0, atol=1e-6,
                                   err_msg=f"{size} at {n}")


def test_size_and_crop_arithmetic_follows_torchvision():
    assert resized_size(640, 480, 224) == (298, 224)  # int(224*640/480) = int(298.67), truncated
    assert resized_size(480, 640, 224) == (224, 298)
    assert resized_size(100, 100, 224) == (224, 224)
    assert center_crop_box(225, 224, 224) == (0, 0, 224, 224)  # round(0.5) = 0 (half to even)
    assert center_crop_box(227, 224, 224) == (2, 0, 226, 224)  # round(1.5) = 2


def test_normalised_values_of_flat_colours():
    white = image_transform(32)(Image.new("RGB", (40, 32), (255, 255, 255)))
    black = image_transform(32)(Image.new("L", (32, 40), 0))
    for c in range(3):
        np.testing.assert_allclose(white[c], (1 - OPENAI_MEAN[c]) / OPENAI_STD[c], rtol=1e-6)
        np.testing.assert_allclose(black[c], -OPENAI_MEAN[c] / OPENAI_STD[c], rtol=1e-6)


def test_transform_is_picklable_for_data_workers():
    transform = image_transform(48)
    image = make_image("RGB", (60, 50), seed=7)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(transform))(image), transform(image))


@pytest.mark.parametrize("bad", [0, -3, 2.5, "224", None, True])
def test_bad_image_size_is_user_error(bad):
    with pytest.raises(UserError, match="image_size"):
        image_transform(bad)


def test_non_image_input_is_user_error():
    with pytest.raises(UserError, match="expected a PIL.Image.Image"):
        image_transform(32)(np.zeros((32, 32, 3), dtype=np.uint8))


def siglip_reference(image: Image.Image, n: int) -> np.ndarray:
    """open_clip's `resize_mode: squash` with SigLIP's mean = std = 0.5 (its INCEPTION_MEAN / _STD): torchvision
    Resize((n, n), BICUBIC) on the PIL image in its own mode, then RGB, ToTensor and Normalize."""
    if image.size != (n, n):
        image = image.resize((n, n), resample=Image.BICUBIC)
    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8, copy=True)).permute(2, 0, 1)
    return pixels.to(torch.float32).div(255).sub(0.5).div(0.5).numpy()


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_siglip_squash_matches_open_clips_preprocess_config(mode):
    """The whole image squashed to the square (aspect ratio not kept, nothing cropped), 0.5 mean and std:
    the values of open_clip's SigLIP preprocess_cfg (pretrained.py's _slpcfg), which the transform follows."""
    import openclip_reference as ref

    ref.import_open_clip()
    from open_clip.pretrained import _slpcfg

    cfg = _slpcfg()
    assert (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"], cfg["resize_mode"]) == (
        (0.5,) * 3, (0.5,) * 3, "bicubic", "squash")
    transform = image_transform(64, "siglip")
    for k, size in enumerate([(64, 64), (300, 200), (31, 97), (1000, 31)]):
        image = make_image(mode, size, seed=300 + k)
        ours = transform(image)
        assert ours.shape == (3, 64, 64)
        np.testing.assert_allclose(ours, siglip_reference(image, 64), rtol=0, atol=1e-6, err_msg=f"{mode} {size}")
    wide = make_image("RGB", (300, 200), seed=9)
    assert np.abs(transform(wide) - image_transform(64)(wide)).max() > 0.1  # not OpenAI's crop and statistics
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(transform))(wide), transform(wide))
    with pytest.raises(UserError, match="preprocess='squash', expected one of openai, siglip"):
        image_transform(64, "squash")
