"""CIFAR-100 test files in the real python layout, holding images drawn so that each class has its own look
(background colour and shape): the zero-shot, evaluation, bad-input and run-mode tests read them."""
import os
import pickle

import numpy as np
from PIL import Image, ImageDraw

RAW_NAMES = ["apple", "aquarium_fish", "maple_tree", "lawn_mower", "bus", "rose", "sweet_pepper", "whale"]
CLEAN_NAMES = ["apple", "aquarium fish", "maple tree", "lawn mower", "bus", "rose", "sweet pepper", "whale"]


def draw_images(n_classes: int, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class c: its own background colour and shape, jittered position and pixel noise. uint8 [N,32,32,3]."""
    rng = np.random.default_rng(seed)
    backgrounds = rng.integers(0, 256, (n_classes, 3))
    images, labels = [], []
    for c in range(n_classes):
        for _ in range(per_class):
            img = Image.new("RGB", (32, 32), tuple(int(v) for v in backgrounds[c]))
            draw = ImageDraw.Draw(img)
            x, y = rng.integers(4, 12, 2)
            box = [int(x), int(y), int(x) + 16, int(y) + 16]
            fill = tuple(int(v) for v in 255 - backgrounds[c])
            [draw.rectangle, draw.ellipse, lambda b, fill: draw.polygon(
                [(b[0], b[3]), (b[2], b[3]), ((b[0] + b[2]) // 2, b[1])], fill=fill)][c % 3](box, fill=fill)
            arr = np.asarray(img).astype(np.int64) + rng.integers(-30, 31, (32, 32, 3))
            images.append(np.clip(arr, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.asarray(labels)


def write_cifar(root: str, images: np.ndarray, labels: np.ndarray, raw_names: list) -> str:
    """The real CIFAR-100 python layout: pickled dicts with bytes keys, rows R(1024) G(1024) B(1024)."""
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    split = {b"batch_label": b"testing batch 1 of 1", b"fine_labels": [int(v) for v in labels],
             b"coarse_labels": [0] * len(labels), b"data": rows,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    meta = {b"fine_label_names": [n.encode() for n in raw_names], b"coarse_label_names": [b"all"]}
    for name, obj in (("test", split), ("train", split), ("meta", meta)):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(obj, f, protocol=2)
    return root
