"""Labelled image sets as training data: each image's captions are the prompt templates filled with its
class name, so fine-tuning on a classification set uses the same texts zero-shot evaluation scores with.

The pipeline picks one template per sample per epoch (its seeded caption choice), like one of several
captions of a Flickr8k image.
"""
from __future__ import annotations

from clip.data.base import CaptionSource, ClassificationSource, DatasetConfig, read_file_bytes


class ClassCaptions(CaptionSource):
    """A ClassificationSource seen as image-caption pairs (labels read without touching the images)."""

    def __init__(self, source: ClassificationSource):
        self.source = source
        self.labels = [int(v) for v in source.labels]

    def __len__(self) -> int:
        return len(self.source)

    def captions(self, i: int) -> list[str]:
        name = self.source.classnames[self.labels[i]]
        return [t.format(name) for t in self.source.templates]

    def image(self, i: int):
        return self.source[i][0]

    def encoded_image(self, i: int) -> bytes:
        files = getattr(self.source, "files", None)
        return read_file_bytes(files[i]) if files is not None else super().encoded_image(i)

    def name(self, i: int) -> str:
        return self.source.name(i)


def load_imagefolder(cfg: DatasetConfig) -> ClassCaptions:
    """`type: imagefolder` as data.train: one sub-folder per class under data.path (or data.path/<split>)."""
    from clip.data import imagefolder

    return ClassCaptions(imagefolder.load(cfg, key="data.train"))


def load_cifar100(cfg: DatasetConfig) -> ClassCaptions:
    """`type: cifar100` as data.train: the python-format split named by data.split (normally train)."""
    from clip.data import cifar100

    return ClassCaptions(cifar100.load(cfg, key="data.train"))
