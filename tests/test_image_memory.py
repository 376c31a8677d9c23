"""Images are reduced while they are decoded and cropped before they are resized: predicting on a 1 x 100000
PNG (277 bytes, passes the decompression-bomb guard) costs no more memory than on a normal photo."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def peak_rss_kib(argv: list, cwd: Path) -> int:
    """Peak resident memory of one real `python -m clip.predict` process (its own rusage, via wait4)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "clip.predict", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err
    assert "cat" in out and "dog" in out
    return usage.ru_maxrss


@pytest.mark.processes
def test_a_1_by_100000_png_costs_what_a_normal_image_costs(tmp_path):
    import mindspore as ms

    from clip.model import create_model

    ms.set_seed(0)
    ckpt = tmp_path / "tiny.ckpt"
    ms.save_checkpoint(create_model("clip_tiny"), str(ckpt))
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 100000), (200, 30, 30)).save(thin)
    normal = tmp_path / "normal.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(normal)
    assert thin.stat().st_size < 1000
    args = ["--checkpoint", str(ckpt), "--labels", "cat,dog"]
    base = peak_rss_kib(args + ["--image", str(normal)], tmp_path)
    thin_peak = peak_rss_kib(args + ["--image", str(thin)], tmp_path)
    print(f"peak RSS: normal image {base / 1024:.0f} MiB, 1 x 100000 PNG {thin_peak / 1024:.0f} MiB")
    assert thin_peak <= 1.25 * base


def thin_reference(image: Image.Image, n: int) -> np.ndarray:
    """OpenAI's resize-then-crop of a 1-pixel-thin image, in memory by the resized line: PIL resizes one axis
    after the other, and across the single pixel every output is that pixel (one weight of 1.0), so the full
    resize is the resize of the line, repeated. A 1 x N image is transposed (exact) to use the same row."""
    from clip.model.transforms import center_crop_box, normalize, resized_size

    column = image.width == 1
    line = image.transpose(Image.Transpose.TRANSPOSE) if column else image
    new_size = resized_size(line.width, 1, n)
    left, _, right, _ = center_crop_box(*new_size, n)
    row = np.asarray(line.resize((new_size[0], 1), Image.Resampling.BICUBIC).crop((left, 0, right, 1)).convert("RGB"))
    block = np.repeat(row, n, axis=0)
    return normalize(block.transpose(1, 0, 2) if column else block)


@pytest.mark.parametrize("n", [224, 256, 336, 384])
def test_thin_images_equal_resize_then_crop(n):
    """1 x 100000 and 100000 x 1 go through the bounded path and still equal the full resize within 1e-6: across
    the thin side the one source pixel is copied, and along the long one the box (N - 1) / 2 .. (N + 1) / 2 is
    exact in float32, the precision Pillow takes box coordinates in. (The reference costs seconds: Pillow's
    coefficients for n x 100000 outputs; one line serves both orientations.)"""
    from clip.model.transforms import ELONGATED, image_transform, resized_size

    line = np.random.default_rng(n).integers(0, 256, (1, 100000), dtype=np.uint8)
    wide = Image.fromarray(line, "L")
    reference = thin_reference(wide, n)
    for image, expected in ((wide, reference), (wide.transpose(Image.Transpose.TRANSPOSE),
                                                 reference.transpose(0, 2, 1))):
        new_size = resized_size(*image.size, n)
        assert new_size[0] * new_size[1] > ELONGATED * n * n
        np.testing.assert_allclose(image_transform(n)(image), expected, rtol=0, atol=1e-6,
                                   err_msg=f"{image.size} at {n}")


def test_bounded_path_is_within_one_level_of_resize_then_crop():
    """What the bounded path (aspect ratio beyond ELONGATED) gives elsewhere, measured against the full resize:
    where the short side shrinks it is identical; where it is enlarged, Pillow's float32 box coordinates move
    filter weights in their last bits and a few values in 10^4 come out 1 level off (docs/model.md)."""
    from clip.model.transforms import ELONGATED, center_crop_box, resize_crop, resized_size

    rng = np.random.default_rng(1)
    size, off, total = 64, 0, 0
    for width, height, mode in ((40, 4000, "RGB"), (4000, 40, "L"), (23, 3000, "RGB"), (3000, 23, "RGB"),
                                (63, 8000, "L"), (300, 30000, "RGB"), (30000, 300, "L"), (100, 9000, "RGB")):
        channels = {"RGB": 3}.get(mode)
        pixels = rng.integers(0, 256, (height, width) + ((channels,) if channels else ()), dtype=np.uint8)
        image = Image.fromarray(pixels, mode)
        new_size = resized_size(width, height, size)
        assert new_size[0] * new_size[1] > ELONGATED * size * size
        full = image.resize(new_size, Image.Resampling.BICUBIC).crop(center_crop_box(*new_size, size))
        fast = resize_crop(image, new_size, size)
        diff = np.abs(np.asarray(full, np.int16) - np.asarray(fast, np.int16))
        assert fast.size == (size, size) and diff.max() <= 1, (width, height, mode, diff.max())
        if min(width, height) > size:  # shrinking: identical
            assert diff.max() == 0, (width, height, mode)
        off, total = off + int((diff > 0).sum()), total + diff.size
    assert off / total < 1e-3, (off, total)


@pytest.mark.processes
def test_thin_images_cost_memory_by_the_output_size(tmp_path):
    """Peak memory of the transform itself, in a fresh process: a 1 x 100000 and a 100000 x 1 RGB image at 384 px
    add a few MiB, where resizing them in full would take 59 GB (384 x 38.4 million pixels of 4 bytes)."""
    script = (
        "import resource, sys\n"
        "from PIL import Image\n"
        "from clip.model.transforms import image_transform\n"
        "transform = image_transform(384)\n"
        "thin = [Image.new('RGB', (1, 100000), (200, 30, 30)), Image.new('RGB', (100000, 1), (30, 200, 30))]\n"
        "transform(Image.new('RGB', (384, 384)))  # warm up: imports, numpy buffers\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for image in thin:\n"
        "    assert transform(image).shape == (3, 384, 384)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    grown_kib = int(proc.stdout.split()[-1])
    print(f"peak RSS growth: {grown_kib} KiB")
    assert grown_kib < 16 * 1024


@pytest.mark.processes
def test_huge_jpegs_are_decoded_at_a_reduced_scale(tmp_path):
    """A 6400 x 4800 (31 MP) JPEG decodes at 1/4 scale, still at least twice the largest model input per side;
    a 12 MP photo decodes in full."""
    from clip.data.base import load_image_file
    from clip.eval.predict import load_image
    from clip.model.transforms import DRAFT_MIN_SIDE

    huge, photo = tmp_path / "huge.jpg", tmp_path / "photo.jpg"
    Image.new("RGB", (6400, 4800), (10, 120, 200)).save(huge, quality=80)
    Image.new("RGB", (4000, 3000), (10, 120, 200)).save(photo, quality=80)
    for load in (load_image, load_image_file):
        reduced = load(str(huge))
        assert reduced.size == (1600, 1200) and min(reduced.size) >= DRAFT_MIN_SIDE
        assert load(str(photo)).size == (4000, 3000)
