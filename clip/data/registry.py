"""Every dataset type, and which loader serves each role: the one list config validation reads.

Adding a dataset is one new module under clip/data/ plus one line here. A loader named for "train" returns a
CaptionSource (training, retrieval); one named for "eval" returns a ClassificationSource (zero-shot).
"""
from __future__ import annotations

import importlib

DATASETS: dict[str, dict[str, str]] = {
    "shapes": {"train": "clip.data.shapes:load", "eval": "clip.data.shapes:load_eval"},
    "flickr8k": {"train": "clip.data.flickr8k:load"},
    "csv": {"train": "clip.data.captions:load"},
    "cifar100": {"train": "clip.data.classcaptions:load_cifar100", "eval": "clip.data.cifar100:load"},
    "imagefolder": {"train": "clip.data.classcaptions:load_imagefolder", "eval": "clip.data.imagefolder:load"},
    "webdataset": {"train": "clip.data.webdataset:load"},
    "mindrecord": {"train": "clip.data.mindrecord:load"},
    "imagenet": {"eval": "clip.data.imagenet:load"},
    "clip_benchmark": {"train": "clip.data.clip_benchmark:load_captions", "eval": "clip.data.clip_benchmark:load"},
}


def types_for(role: str) -> tuple[str, ...]:
    """Dataset types that serve `role` ("train" or "eval"), in registry order."""
    return tuple(name for name, loaders in DATASETS.items() if role in loaders)


def loader(name: str, role: str):
    """The load(cfg) function of dataset `name` for `role` (imported on first use)."""
    module, _, function = DATASETS[name][role].partition(":")
    return getattr(importlib.import_module(module), function)
