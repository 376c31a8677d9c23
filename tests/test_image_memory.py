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


def test_cropping_before_resizing_gives_the_same_pixels():
    """The elongated-image path equals OpenAI's resize-then-crop (within one level of rounding)."""
    from clip.model.transforms import ELONGATED, center_crop_box, resize_crop, resized_size

    rng = np.random.default_rng(1)
    size = 64
    for width, height, mode in ((50, 400, "RGB"), (1000, 37, "L"), (3, 900, "RGBA"), (900, 5, "LA"), (20, 300, "P"),
                                (1, 5000, "RGB"), (64, 1000, "RGB"), (257, 64, "RGBA"), (37, 1000, "RGB")):
        channels = {"RGB": 3, "RGBA": 4, "LA": 2}.get(mode)
        pixels = rng.integers(0, 256, (height, width) + ((channels,) if channels else ()), dtype=np.uint8)
        image = Image.fromarray(pixels, "L" if mode == "P" else mode)
        image = image.convert("P") if mode == "P" else image
        new_size = resized_size(width, height, size)
        assert new_size[0] * new_size[1] > ELONGATED * size * size
        full = image.resize(new_size, Image.Resampling.BICUBIC).crop(center_crop_box(*new_size, size))
        fast = resize_crop(image, new_size, size)
        diff = np.abs(np.asarray(full.convert("RGBA"), np.int16) - np.asarray(fast.convert("RGBA"), np.int16))
        assert fast.size == (size, size) and diff.max() <= 1, (width, height, mode, diff.max())


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
