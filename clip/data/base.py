"""Dataset config and the two source contracts every dataset module implements.

Sources are plain random-access Python objects (no MindSpore here) so that the pipeline can shard them
by index and evaluation can iterate them directly.
"""
from __future__ import annotations

import abc
import hashlib
import io
import os
import string
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from PIL import Image

from clip.model.transforms import reduce_while_decoding
from clip.data.registry import DATASETS
from clip.schema import setting
from launcher.errors import UserError

ImageLike = Union[Image.Image, np.ndarray]


@dataclass
class DatasetConfig:
    """Where a dataset lives and how to read it; the training config embeds one as data.train / data.eval."""

    # clip/data/registry.py; which types serve which role: clip.config.validate
    type: str = setting("shapes", choices=lambda: tuple(DATASETS))
    path: Optional[str] = setting(None, path="input")  # file or directory by type: the loader says which
    split: str = "train"
    num_samples: int = setting(2048, ge=1)  # shapes only: samples in the split
    seed: int = setting(0, ge=0)     # shapes only: generation seed (the split is mixed in)
    csv_image_key: str = setting("filepath", nonempty=True)  # csv only: column holding the image path
    csv_caption_key: str = setting("title", nonempty=True)  # csv only: column holding the caption
    # csv only: None = "\t" for .tsv, "," otherwise
    csv_separator: Optional[str] = setting(None, form=lambda s: len(s) == 1, form_what="one character")
    classnames_file: Optional[str] = setting(None, path="input")  # imagefolder only: one class name per line
    # zero-shot prompt templates; None = the dataset's own
    templates: Optional[list[str]] = setting(None, nonempty=True, form=lambda t: is_template(t),
                                             form_what="a template with exactly one bare '{}' for the class name")
    # relative file path -> expected hex digest
    sha256: Optional[dict[str, str]] = setting(None, pattern="[0-9a-fA-F]{64}", form_what="a SHA-256 hex digest")
    # webdataset only: where shard indexes go; None = beside the shards
    index_dir: Optional[str] = setting(None, path="output_dir")
    recall_k: list[int] = setting(factory=lambda: [1, 5, 10], ge=1, nonempty=True)  # retrieval: each Recall@K's K


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the pipeline counts it and substitutes another sample."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class CaptionSource(abc.ABC):
    """Random-access image-caption pairs: source[i] -> (image, captions), several captions per image."""

    @abc.abstractmethod
    def __len__(self) -> int:
        ...

    @abc.abstractmethod
    def captions(self, i: int) -> list[str]:
        """All captions of sample i, without touching the image (cheap)."""

    @abc.abstractmethod
    def image(self, i: int) -> ImageLike:
        """The image of sample i; raises UnreadableImage if it cannot be decoded."""

    def name(self, i: int) -> str:
        """What to call sample i in warnings (a file name where there is one)."""
        return f"sample {i}"

    def encoded_image(self, i: int) -> bytes:
        """Sample i's image as an encoded file (what packing stores); file-backed sources return the file's
        own bytes so that a packed copy decodes to the same pixels. Here: lossless PNG of image(i)."""
        img = self.image(i)
        buf = io.BytesIO()
        (Image.fromarray(img) if isinstance(img, np.ndarray) else img).save(buf, format="PNG")
        return buf.getvalue()

    def __getitem__(self, i: int) -> tuple[ImageLike, list[str]]:
        return self.image(i), self.captions(i)


class ClassificationSource(abc.ABC):
    """Random-access labelled images plus the class names and prompt templates for zero-shot."""

    classnames: list[str]
    templates: list[str]

    @abc.abstractmethod
    def __len__(self) -> int:
        ...

    @abc.abstractmethod
    def __getitem__(self, i: int) -> tuple[ImageLike, int]:
        ...

    def name(self, i: int) -> str:
        return f"sample {i}"


def is_template(text) -> bool:
    """True for a text with exactly one replacement field, the bare '{}' (no name, conversion or format spec),
    so that text.format(label) can neither fail nor read anything but the label."""
    if not isinstance(text, str):
        return False
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError:  # a lone '{' or '}'
        return False
    return fields == [("", "", None)]


def check_templates(templates) -> list[str]:
    """Prompt templates as a list, or a UserError: each needs exactly one '{}' for the class name."""
    if not isinstance(templates, (list, tuple)):
        raise UserError(f"data.eval.templates: {templates!r} is not a list of templates")
    bad = [t for t in templates if not is_template(t)]
    if bad or not templates:
        raise UserError(f"data.eval.templates: {bad[0] if bad else list(templates)!r} is not a usable template "
                        "(expected a non-empty list of texts, each with exactly one '{}' for the class name)")
    return list(templates)


def load_image_file(path: str) -> Image.Image:
    """Decode an image file fully to RGB now, so that truncated files fail here and not later."""
    try:
        with Image.open(path) as img:
            reduce_while_decoding(img).load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(os.path.basename(path), str(exc) or type(exc).__name__) from None


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode an in-memory image file fully to RGB; the same decoding every format goes through."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except Image.UnidentifiedImageError:
        raise UnreadableImage(name, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(name, str(exc) or type(exc).__name__) from None


def read_file_bytes(path: str) -> bytes:
    """A file's bytes, or UnreadableImage naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UnreadableImage(os.path.basename(path), exc.strerror or str(exc)) from None


def require_dir(path: Optional[str], what: str) -> str:
    """The dataset directory, or a UserError naming it."""
    if not path:
        raise UserError(f"{what}: data path is not set (expected a directory)")
    if not os.path.isdir(path):
        raise UserError(f"{what}: dataset directory {path!r} does not exist")
    return path


def verify_sha256(root: str, expected: Optional[dict[str, str]]) -> None:
    """Check dataset files against known digests; a mismatch is the user's problem, named precisely."""
    for rel, digest in (expected or {}).items():
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise UserError(f"sha256: file {path!r} listed in sha256 does not exist")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest.lower():
            raise UserError(f"sha256: {path!r} has digest {h.hexdigest()}, expected {digest.lower()}")
