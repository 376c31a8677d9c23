"""CIFAR-100 in its python format (`cifar-100-python/{meta,test,train}`) as a zero-shot classification source.

The files are pickles; they are read with an unpickler that only admits the numpy array types CIFAR uses,
so that a tampered file cannot run code.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from importlib import resources

import numpy as np
from PIL import Image

from clip.data.base import ClassificationSource, DatasetConfig, check_templates, require_dir, verify_sha256
from launcher.errors import UserError

SPLITS = {"test": "test", "train": "train", "val": "test"}  # CIFAR-100 evaluates on test: data.eval's default
                                                          # split "val" means it here
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes with protocol 2
}


def shipped_prompts() -> tuple[list[str], list[str]]:
    """The cleaned CIFAR-100 class names and the 18 templates of the CLIP paper, shipped in the package."""
    data = json.loads(resources.files("clip").joinpath("assets/cifar100_prompts.json").read_text("utf-8"))
    return list(data["classes"]), list(data["templates"])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: str) -> dict:
    """One CIFAR pickle as a dict with bytes keys; a missing or unreadable file is a UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f"data.eval.path: {path!r} does not exist "
                        f"(expected CIFAR-100 python format cifar-100-python/{{meta,test,train}})")
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:  # any decoding failure means the file is not a CIFAR pickle
        raise UserError(f"{path!r} is not a readable CIFAR-100 pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path!r} is not a CIFAR-100 pickle (top-level {type(data).__name__}, expected dict)")
    return data


def decode_split(data: dict, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N,32,32,3] uint8 and fine labels [N] from a split dict; rows are R(1024) G(1024) B(1024)."""
    if b"data" not in data or b"fine_labels" not in data:
        raise UserError(f"{path!r} lacks b'data' or b'fine_labels' (is it a CIFAR-100 split file?)")
    pixels = data[b"data"]
    raw_labels = data[b"fine_labels"]
    if not isinstance(pixels, np.ndarray):
        raise UserError(f"{path!r}: data is a {type(pixels).__name__}, expected a (N, 3072) uint8 array")
    if not isinstance(raw_labels, (list, tuple, np.ndarray)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw_labels):
        raise UserError(f"{path!r}: fine_labels must be a list of integers")
    labels = np.asarray(raw_labels, dtype=np.int64).reshape(-1)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        raise UserError(f"{path!r}: data has shape {pixels.shape} {pixels.dtype}, expected (N, 3072) uint8")
    if labels.shape != (pixels.shape[0],):
        raise UserError(f"{path!r}: {labels.shape[0]} labels for {pixels.shape[0]} images")
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def clean_classnames(raw: list[str]) -> list[str]:
    """File names like 'aquarium_fish' -> the shipped cleaned names ('aquarium fish'); others get spaces."""
    shipped, _ = shipped_prompts()
    by_raw = {name.replace(" ", "_"): name for name in shipped}
    return [by_raw.get(name, name.replace("_", " ")) for name in raw]


class Cifar100(ClassificationSource):
    def __init__(self, images: np.ndarray, labels: np.ndarray, classnames: list[str], templates: list[str],
                 split: str):
        self.images, self.labels = images, labels
        self.classnames, self.templates = classnames, templates
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i]), int(self.labels[i])

    def name(self, i: int) -> str:
        return f"{self.split}[{i}]"


def resolve_root(path: str) -> str:
    """Accept the `cifar-100-python` directory itself or the directory that contains it."""
    inner = os.path.join(path, "cifar-100-python")
    return inner if os.path.isdir(inner) else path


def load(cfg: DatasetConfig, key: str = "data.eval") -> Cifar100:
    """`key` is the config section named in errors (data.eval, or data.train when training on CIFAR-100)."""
    root = require_dir(cfg.path, f"{key}.path")
    verify_sha256(root, cfg.sha256)
    if cfg.split not in SPLITS:
        raise UserError(f"{key}.split: {cfg.split!r} is not a CIFAR-100 split (expected test or train; "
                        f"val means test)")
    folder = resolve_root(root)
    meta_path = os.path.join(folder, "meta")
    meta = read_pickle(meta_path)
    if b"fine_label_names" not in meta:
        raise UserError(f"{meta_path!r} lacks b'fine_label_names' (is it the CIFAR-100 meta file?)")
    names = meta[b"fine_label_names"]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise UserError(f"{meta_path!r}: fine_label_names must be a non-empty list of names")
    try:
        raw = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise UserError(f"{meta_path!r}: fine_label_names are not UTF-8 text") from None
    split_path = os.path.join(folder, SPLITS[cfg.split])
    images, labels = decode_split(read_pickle(split_path), split_path)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(raw)):
        raise UserError(f"{split_path!r}: labels span {labels.min()}..{labels.max()}, "
                        f"but meta names {len(raw)} classes")
    _, templates = shipped_prompts()
    return Cifar100(images, labels, clean_classnames(raw), check_templates(cfg.templates or templates),
                    SPLITS[cfg.split])
