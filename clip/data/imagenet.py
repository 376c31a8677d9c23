"""ImageNet-1k validation in the standard layout, and the variants that share its class list.

One folder per class, named by its WordNet id (`n01440764` ...); the sorted order of the 1000 wnids is the
class index, and OpenAI's 1000 class names and 80 templates (shipped in clip/assets/imagenet_prompts.json)
are indexed the same way. `data.eval.path` may name the folder holding `val/` or `val/` itself.

Accepted layouts, decided by the folder names (a partial copy of ImageNet must not pass as a smaller
benchmark, so any other count is refused with the missing wnids named):
- all 1000 wnids: ImageNet-1k val, ImageNet-Sketch;
- exactly 200 wnids: the 200-class subsets (ImageNet-R, ImageNet-A), evaluated over their own 200 classes;
- folders `0` .. `999`: ImageNetV2, whose folder number is the class index.
Class folders may be empty (they then count in no metric); at least one image is needed.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from importlib import resources

from clip.data.base import DatasetConfig, check_templates, require_dir, verify_sha256
from clip.data.imagefolder import ImageFolder, list_images
from launcher.errors import UserError

N_CLASSES = 1000
SUBSET_CLASSES = 200
_WNID = re.compile(r"n\d{8}")


@lru_cache(maxsize=1)
def shipped() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(wnids in class-index order, OpenAI's class names, OpenAI's 80 templates)."""
    data = json.loads(resources.files("clip").joinpath("assets/imagenet_prompts.json").read_text("utf-8"))
    return tuple(data["wnids"]), tuple(data["classes"]), tuple(data["templates"])


def resolve_root(path: str, split: str, key: str) -> str:
    """`<path>/<split>` when that folder exists (the folder holding val/), else path itself: the evaluated
    folder may be named directly, but a train split (a linear probe's) must be a train/ folder beside it."""
    inner = os.path.join(path, split)
    if split and os.path.isdir(inner):
        return inner
    if split == "train":
        raise UserError(f"{key}.path: {inner!r} does not exist (split train: ImageNet's train/ folder, one folder "
                        f"per wnid, beside val/)")
    return path


def class_indices(root: str, folders: list[str], key: str) -> list[int]:
    """The ImageNet class index of each class folder, or a UserError naming the folder and what is wrong."""
    wnids, _, _ = shipped()
    if all(f.isdigit() for f in folders):
        numbers = sorted(int(f) for f in folders)
        if numbers != list(range(N_CLASSES)) or len(set(folders)) != N_CLASSES:
            raise UserError(f"{key}.path: {root!r} has {len(folders)} numbered class folders; ImageNetV2's layout "
                            f"is exactly the folders 0 .. {N_CLASSES - 1}")
        return [int(f) for f in folders]
    index = {w: i for i, w in enumerate(wnids)}
    odd = [f for f in folders if f not in index]
    if odd:
        kind = "an ImageNet-1k wnid" if _WNID.fullmatch(odd[0]) else "a wnid (n01440764 ...) or a class number"
        raise UserError(f"{key}.path: class folder {os.path.join(root, odd[0])!r} is not {kind}")
    if len(folders) not in (N_CLASSES, SUBSET_CLASSES):
        missing = [w for w in wnids if w not in set(folders)]
        raise UserError(f"{key}.path: {root!r} has {len(folders)} class folders, missing {', '.join(missing[:3])}"
                        f"{' ...' if len(missing) > 3 else ''}; expected all {N_CLASSES} ImageNet wnids (or "
                        f"exactly {SUBSET_CLASSES} for ImageNet-R/-A)")
    return [index[f] for f in folders]


def load(cfg: DatasetConfig, key: str = "data.eval") -> ImageFolder:
    root = require_dir(cfg.path, f"{key}.path")
    verify_sha256(root, cfg.sha256)
    root = resolve_root(root, cfg.split, key)
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not folders:
        raise UserError(f"{key}.path: {root!r} has no class folders (expected ImageNet's val/ with one folder "
                        f"per wnid)")
    indices = class_indices(root, folders, key)
    # Folders in class-index order (ImageNetV2's "10" sorts before "2" as text).
    ordered = [f for _, f in sorted(zip(indices, folders))]
    _, classes, templates = shipped()
    files, labels = [], []
    for label, folder in enumerate(ordered):
        images = list_images(os.path.join(root, folder))
        files += images
        labels += [label] * len(images)
    if not files:
        raise UserError(f"{key}.path: {root!r} has {len(folders)} class folders but no image files in them")
    classnames = [classes[i] for i in sorted(indices)]
    return ImageFolder(files, labels, classnames, check_templates(cfg.templates or list(templates)), root)
