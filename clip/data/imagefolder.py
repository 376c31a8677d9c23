"""An image-folder classification set: one sub-folder per class, images inside (any depth).

Class names come from the folder names (underscores become spaces) or, in sorted-folder order, from a
file with one name per line. When `<path>/<split>` is a directory (ImageNet-style train/ and val/), that
folder is used.
"""
from __future__ import annotations

import os

from PIL import Image

from clip.data.base import (
    ClassificationSource,
    DatasetConfig,
    check_templates,
    load_image_file,
    require_dir,
    verify_sha256,
)
from launcher.errors import UserError, read_user_file

DEFAULT_TEMPLATES = ["a photo of a {}."]


def image_extensions() -> set[str]:
    """Every file extension PIL can open here."""
    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def list_images(folder: str) -> list[str]:
    """Image files under folder (recursively, sorted, hidden files skipped), by extension."""
    exts = image_extensions()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts]
    return found


def read_classnames(path: str, n_folders: int, key: str = "data.eval") -> list[str]:
    if not os.path.isfile(path):
        raise UserError(f"{key}.classnames_file: {path!r} does not exist")
    text = read_user_file(path, f"{key}.classnames_file (one UTF-8 class name per line)")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != n_folders:
        raise UserError(f"{key}.classnames_file: {path!r} has {len(names)} names, "
                        f"expected one per class folder ({n_folders})")
    return names


class ImageFolder(ClassificationSource):
    def __init__(self, files: list[str], labels: list[int], classnames: list[str], templates: list[str],
                 root: str):
        self.files, self.labels = files, labels
        self.classnames, self.templates = classnames, templates
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return load_image_file(self.files[i]), self.labels[i]

    def name(self, i: int) -> str:
        return os.path.relpath(self.files[i], self.root)


def load(cfg: DatasetConfig, key: str = "data.eval") -> ImageFolder:
    """`key` is the config section named in errors (data.eval, or data.train when training on the folder)."""
    root = require_dir(cfg.path, f"{key}.path")
    verify_sha256(root, cfg.sha256)
    if cfg.split and os.path.isdir(os.path.join(root, cfg.split)):
        root = os.path.join(root, cfg.split)
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not folders:
        raise UserError(f"{key}.path: {root!r} has no class sub-folders (expected one folder per class)")
    files, labels = [], []
    for label, folder in enumerate(folders):
        images = list_images(os.path.join(root, folder))
        files += images
        labels += [label] * len(images)
    if not files:
        raise UserError(f"{key}.path: {root!r} has class folders but no image files in them")
    classnames = (read_classnames(cfg.classnames_file, len(folders), key) if cfg.classnames_file
                  else [f.replace("_", " ") for f in folders])
    return ImageFolder(files, labels, classnames, check_templates(cfg.templates or DEFAULT_TEMPLATES), root)
