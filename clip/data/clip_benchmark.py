"""LAION CLIP_benchmark's WebDataset layout, the form its published test sets come in
(`clip_benchmark/datasets/builder.py::build_wds_dataset`):

    <dir>/dataset_type.txt                       classification (when absent), retrieval or multilabel
    <dir>/classnames.txt                         one class name per line (classification, multilabel)
    <dir>/zeroshot_classification_templates.txt  one template per line, `{c}` for the class name
    <dir>/<split>/nshards.txt                    the number of shards n
    <dir>/<split>/0.tar ... <n-1>.tar            samples: an image (.webp, .png, .jpg or .jpeg, first found in
                                                 that order), and .cls (class index as text), .txt (retrieval:
                                                 one caption per line) or .npy (multilabel: a 0/1 vector)

The split is `test` unless set (`val`, data.eval's default, means `test` here, as for CIFAR-100). Shards are
read in place: one scan of each tar's headers, then one pread per member; nothing is written beside them.
Every label is read and checked when the set is opened; images are decoded as evaluation reaches them, and an
image that cannot be decoded stops the evaluation naming its shard and key: a benchmark number must cover
every sample of the set to be comparable with anyone else's.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from clip.data.base import (
    CaptionSource,
    ClassificationSource,
    DatasetConfig,
    UnreadableImage,
    check_templates,
    decode_image,
    require_dir,
)
from clip.data.webdataset import group_samples, scan_tar
from launcher.errors import UserError, read_user_file

DATASET_TYPES = ("classification", "retrieval", "multilabel")
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
SPLITS = {"val": "test"}
DEFAULT_TEMPLATES = ["a photo of a {}."]


@dataclass
class Layout:
    root: str
    dataset_type: str
    shards: list[str]


def dataset_type(root: str) -> str:
    """The set's dataset_type.txt (classification when the file is absent)."""
    path = os.path.join(root, "dataset_type.txt")
    if not os.path.exists(path):
        return "classification"
    kind = read_user_file(path, "dataset_type.txt (classification, retrieval or multilabel)").strip().lower()
    if kind not in DATASET_TYPES:
        raise UserError(f"{path}: dataset type {kind!r}, expected one of {', '.join(DATASET_TYPES)}")
    return kind


def layout(cfg: DatasetConfig, key: str) -> Layout:
    root = require_dir(cfg.path, f"{key}.path")
    split = SPLITS.get(cfg.split, cfg.split)
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise UserError(f"{key}.split: {folder!r} does not exist (CLIP_benchmark's layout is "
                        f"<dir>/<split>/nshards.txt and <split>/0.tar ...; split {cfg.split!r})")
    count_path = os.path.join(folder, "nshards.txt")
    if not os.path.isfile(count_path):
        raise UserError(f"{count_path}: missing (CLIP_benchmark's layout names the number of shards there)")
    text = read_user_file(count_path, "nshards.txt (the number of shards)").strip()
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{count_path}: {text[:40]!r} is not a positive number of shards")
    shards = [os.path.join(folder, f"{i}.tar") for i in range(int(text))]
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise UserError(f"{missing[0]}: missing ({count_path} says {text} shards: 0.tar .. {int(text) - 1}.tar)")
    return Layout(root, dataset_type(root), shards)


def read_lines(path: str, what: str) -> list[str]:
    return [line.strip() for line in read_user_file(path, what).splitlines() if line.strip()]


def classnames_of(root: str) -> list[str]:
    path = os.path.join(root, "classnames.txt")
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing (one class name per line, in class-index order)")
    names = read_lines(path, "classnames.txt (one UTF-8 class name per line)")
    if not names:
        raise UserError(f"{path}: holds no class names")
    return names


def templates_of(root: str, cfg: DatasetConfig) -> list[str]:
    """data.eval.templates if set, else the set's own file ({c} -> {}), else "a photo of a {}."."""
    if cfg.templates:
        return check_templates(cfg.templates)
    path = os.path.join(root, "zeroshot_classification_templates.txt")
    if not os.path.isfile(path):
        return list(DEFAULT_TEMPLATES)
    lines = read_lines(path, "zeroshot_classification_templates.txt (one template per line)")
    templates = [t.replace("{c}", "{}") for t in lines]
    try:
        return check_templates(templates)
    except UserError:
        raise UserError(f"{path}: every line must hold one {{c}} for the class name and no other braces") from None


class _Samples:
    """The samples of all shards: where each one's members are, read with pread."""

    def __init__(self, shards: list[str]):
        self.shards = shards
        self.keys: list[str] = []
        self.shard_of: list[int] = []
        self.members: list[dict[str, tuple[int, int]]] = []
        for s, shard in enumerate(shards):
            members, truncated = scan_tar(shard)
            if truncated:
                raise UserError(f"{shard}: truncated tar (a member runs past the end of the file)")
            for key, exts in group_samples(members):
                self.keys.append(key)
                self.shard_of.append(s)
                self.members.append(exts)
        if not self.keys:
            raise UserError(f"{shards[0]}: the {len(shards)} shard(s) hold no samples")

    def where(self, i: int) -> str:
        return f"{self.shards[self.shard_of[i]]}: sample {self.keys[i]!r}"

    def read(self, i: int, ext: str) -> bytes:
        offset, size = self.members[i][ext]
        with open(self.shards[self.shard_of[i]], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise UserError(f"{self.where(i)}: .{ext} is cut short")
        return data

    def require(self, i: int, ext: str, what: str) -> None:
        if ext not in self.members[i]:
            raise UserError(f"{self.where(i)}: no .{ext} member ({what})")

    def image_ext(self, i: int) -> str:
        ext = next((e for e in IMAGE_EXTS if e in self.members[i]), None)
        if ext is None:
            raise UserError(f"{self.where(i)}: no image member (.{', .'.join(IMAGE_EXTS)})")
        return ext

    def image(self, i: int, ext: str):
        try:
            return decode_image(self.read(i, ext), f"{self.keys[i]}.{ext}")
        except UnreadableImage as exc:
            raise UserError(f"{self.where(i)}: image .{ext} cannot be decoded ({exc.reason})") from None


class ClipBenchmarkClassification(ClassificationSource):
    """Labelled images; with `multilabel` the label is a 0/1 vector over the classes."""

    def __init__(self, samples: _Samples, image_exts: list[str], labels, classnames: list[str],
                 templates: list[str], multilabel: bool):
        self.samples, self.image_exts, self.labels = samples, image_exts, labels
        self.classnames, self.templates, self.multilabel = classnames, templates, multilabel

    def __len__(self) -> int:
        return len(self.image_exts)

    def __getitem__(self, i: int):
        return self.samples.image(i, self.image_exts[i]), self.labels[i]

    def name(self, i: int) -> str:
        return self.samples.where(i)


class ClipBenchmarkCaptions(CaptionSource):
    """Images with every caption of their .txt (one per line), for retrieval."""

    def __init__(self, samples: _Samples, image_exts: list[str], captions: list[list[str]]):
        self.samples, self.image_exts, self._captions = samples, image_exts, captions

    def __len__(self) -> int:
        return len(self.image_exts)

    def captions(self, i: int) -> list[str]:
        return self._captions[i]

    def image(self, i: int):
        return self.samples.image(i, self.image_exts[i])

    def name(self, i: int) -> str:
        return self.samples.where(i)


def class_label(samples: _Samples, i: int, n_classes: int, names_path: str) -> int:
    samples.require(i, "cls", "the class index")
    text = samples.read(i, "cls").decode("utf-8", errors="replace").strip()
    if not text.lstrip("-").isdigit():
        raise UserError(f"{samples.where(i)}: .cls {text[:20]!r} is not a class index")
    label = int(text)
    if not 0 <= label < n_classes:
        raise UserError(f"{samples.where(i)}: .cls {label} is outside the class range 0..{n_classes - 1} "
                        f"of {names_path}")
    return label


def multilabel_target(samples: _Samples, i: int, n_classes: int) -> np.ndarray:
    samples.require(i, "npy", "the multilabel target")
    try:
        target = np.load(io.BytesIO(samples.read(i, "npy")), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{samples.where(i)}: .npy is not a readable numpy array ({exc})") from None
    target = np.asarray(target).reshape(-1)
    if target.shape != (n_classes,) or not np.isin(target, (0, 1)).all():
        raise UserError(f"{samples.where(i)}: .npy target has shape {target.shape} {target.dtype}, expected "
                        f"{n_classes} values of 0 or 1 (one per class of classnames.txt)")
    return target.astype(np.int64)


def load(cfg: DatasetConfig, key: str = "data.eval") -> ClipBenchmarkClassification:
    """A classification or multilabel set (data.eval); a retrieval set is refused with the right task named."""
    lay = layout(cfg, key)
    if lay.dataset_type == "retrieval":
        raise UserError(f"{key}.path: {os.path.join(lay.root, 'dataset_type.txt')} says retrieval: evaluate it "
                        f"with --task retrieval")
    classnames = classnames_of(lay.root)
    templates = templates_of(lay.root, cfg)
    samples = _Samples(lay.shards)
    names_path = os.path.join(lay.root, "classnames.txt")
    multilabel = lay.dataset_type == "multilabel"
    exts, labels = [], []
    for i in range(len(samples.keys)):
        exts.append(samples.image_ext(i))
        labels.append(multilabel_target(samples, i, len(classnames)) if multilabel
                      else class_label(samples, i, len(classnames), names_path))
    return ClipBenchmarkClassification(samples, exts, labels, classnames, templates, multilabel)


def load_captions(cfg: DatasetConfig, key: str = "data.retrieval") -> ClipBenchmarkCaptions:
    """A retrieval set: every image with the lines of its .txt as captions."""
    lay = layout(cfg, key)
    if lay.dataset_type != "retrieval":
        raise UserError(f"{key}.path: {lay.root!r} is a {lay.dataset_type} set (dataset_type.txt); retrieval "
                        f"needs dataset_type.txt saying retrieval")
    samples = _Samples(lay.shards)
    exts, captions = [], []
    for i in range(len(samples.keys)):
        exts.append(samples.image_ext(i))
        samples.require(i, "txt", "the captions, one per line")
        lines = [c.strip() for c in samples.read(i, "txt").decode("utf-8", errors="replace").split("\n")]
        lines = [c for c in lines if c]
        if not lines:
            raise UserError(f"{samples.where(i)}: .txt holds no caption")
        captions.append(lines)
    return ClipBenchmarkCaptions(samples, exts, captions)


def kind_of(cfg: DatasetConfig) -> Optional[str]:
    """The dataset type of a clip_benchmark config (None for other types): which task evaluates it."""
    if cfg is None or cfg.type != "clip_benchmark" or not cfg.path or not os.path.isdir(cfg.path):
        return None
    return dataset_type(cfg.path)
