"""Flickr8k: 8k images with five captions each, in the MindFormers layout or the official zips' layout.

Accepted layouts under the configured root (first match wins):
  images:  Flickr8k_Dataset/Flickr8k_Dataset/ (MindFormers), Flickr8k_Dataset/Flicker8k_Dataset/,
           Flicker8k_Dataset/ (official zip, misspelt), Flickr8k_Dataset/
  text:    Flickr8k_text/ or the root itself, holding Flickr8k.token.txt and Flickr_8k.{train,dev,test}Images.txt
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from clip.data.base import CaptionSource, DatasetConfig, load_image_file, read_file_bytes, require_dir, verify_sha256
from launcher.errors import UserError

log = logging.getLogger(__name__)

IMAGE_DIRS = (os.path.join("Flickr8k_Dataset", "Flickr8k_Dataset"),
              os.path.join("Flickr8k_Dataset", "Flicker8k_Dataset"),
              "Flicker8k_Dataset", "Flickr8k_Dataset")
TEXT_DIRS = ("Flickr8k_text", "")
TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "val": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}


def parse_tokens(lines: list[str], where: str) -> dict[str, list[str]]:
    """`<image>#<k>\\t<caption>` lines -> image name -> captions in k order; blank lines ignored."""
    captions: dict[str, list[tuple[int, str]]] = {}
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        key, sep, caption = line.partition("\t")
        image, hash_, k = key.rpartition("#")
        if not sep or not hash_ or not k.isdigit() or not caption.strip():
            raise UserError(f"{where} line {lineno}: expected '<image>#<k><TAB><caption>', got {line[:60]!r}")
        captions.setdefault(image, []).append((int(k), caption.strip()))
    return {image: [c for _, c in sorted(caps)] for image, caps in captions.items()}


def parse_split(lines: list[str]) -> list[str]:
    """One image file name per line; blank lines ignored, order kept, duplicates dropped."""
    return list(dict.fromkeys(s.strip() for s in lines if s.strip()))


def _first_dir(root: str, candidates: tuple[str, ...], must_contain: Optional[str] = None) -> Optional[str]:
    for rel in candidates:
        path = os.path.join(root, rel)
        if os.path.isdir(path) and (must_contain is None or os.path.isfile(os.path.join(path, must_contain))):
            return path
    return None


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


class Flickr8kCaptions(CaptionSource):
    """One split of Flickr8k: the images of the split file that exist, each with its captions."""

    def __init__(self, image_dir: str, names: list[str], captions: dict[str, list[str]]):
        self.image_dir = image_dir
        self.names = names
        self._captions = captions

    def __len__(self) -> int:
        return len(self.names)

    def captions(self, i: int) -> list[str]:
        return self._captions[self.names[i]]

    def image(self, i: int):
        return load_image_file(os.path.join(self.image_dir, self.names[i]))

    def encoded_image(self, i: int) -> bytes:
        return read_file_bytes(os.path.join(self.image_dir, self.names[i]))

    def name(self, i: int) -> str:
        return self.names[i]


def open_split(root: str, split: str) -> Flickr8kCaptions:
    """Read the split from disk; token lines for absent images (the known dangling one) are skipped with a warning."""
    require_dir(root, "flickr8k data.path")
    if split not in SPLIT_FILES:
        raise UserError(f"data.split: {split!r} is not a Flickr8k split (expected train, dev or test)")
    image_dir = _first_dir(root, IMAGE_DIRS)
    if image_dir is None:
        tried = ", ".join(repr(os.path.join(root, d)) for d in IMAGE_DIRS)
        raise UserError(f"flickr8k: no image directory found (tried {tried})")
    text_dir = _first_dir(root, TEXT_DIRS, TOKEN_FILE)
    if text_dir is None:
        tried = " or ".join(repr(os.path.join(root, d, TOKEN_FILE)) for d in TEXT_DIRS)
        raise UserError(f"flickr8k: caption file not found (expected {tried})")
    split_path = os.path.join(text_dir, SPLIT_FILES[split])
    if not os.path.isfile(split_path):
        raise UserError(f"flickr8k: split file {split_path!r} does not exist")

    token_path = os.path.join(text_dir, TOKEN_FILE)
    captions = parse_tokens(_read_lines(token_path), token_path)
    on_disk = set(os.listdir(image_dir))
    for image in sorted(set(captions) - on_disk):
        log.warning("flickr8k: %s names image %r, which is not in %s; its captions are skipped",
                    TOKEN_FILE, image, image_dir)
        del captions[image]

    wanted = parse_split(_read_lines(split_path))
    missing = [n for n in wanted if n not in on_disk]
    uncaptioned = [n for n in wanted if n in on_disk and n not in captions]
    if missing:
        log.warning("flickr8k: %d image(s) listed in %s are not in %s and are skipped (first: %s)",
                    len(missing), split_path, image_dir, ", ".join(missing[:3]))
    if uncaptioned:
        log.warning("flickr8k: %d image(s) listed in %s have no captions in %s and are skipped (first: %s)",
                    len(uncaptioned), split_path, token_path, ", ".join(uncaptioned[:3]))
    names = [n for n in wanted if n in on_disk and n in captions]
    if not names:
        raise UserError(f"flickr8k: split file {split_path!r} lists no image that exists with captions")
    return Flickr8kCaptions(image_dir, names, captions)


def load(cfg: DatasetConfig) -> Flickr8kCaptions:
    """Training source (cfg.split, normally "train")."""
    root = require_dir(cfg.path, "flickr8k data.path")
    verify_sha256(root, cfg.sha256)
    return open_split(root, cfg.split)
