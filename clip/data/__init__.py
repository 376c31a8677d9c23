"""Datasets: config, source contracts, and the builders the training and evaluation code call."""
from __future__ import annotations

import importlib

from clip.data.base import (EVAL_TYPES, TRAIN_TYPES, CaptionSource, ClassificationSource, DatasetConfig,
                            UnreadableImage)
from clip.errors import UserError

__all__ = ["DatasetConfig", "CaptionSource", "ClassificationSource", "UnreadableImage",
           "build_train_source", "build_eval_source", "TRAIN_TYPES", "EVAL_TYPES"]

_TRAIN_MODULES = {"shapes": "clip.data.shapes", "flickr8k": "clip.data.flickr8k", "csv": "clip.data.captions"}
_EVAL_MODULES = {"shapes": "clip.data.shapes", "cifar100": "clip.data.cifar100",
                 "imagefolder": "clip.data.imagefolder"}


def build_train_source(cfg: DatasetConfig) -> CaptionSource:
    """Image-caption pairs for training (or retrieval) from a data.train-style config."""
    if cfg.type not in _TRAIN_MODULES:
        raise UserError(f"data.type: {cfg.type!r} is not a caption dataset (expected one of {', '.join(TRAIN_TYPES)})")
    return importlib.import_module(_TRAIN_MODULES[cfg.type]).load(cfg)


def build_eval_source(cfg: DatasetConfig) -> ClassificationSource:
    """Labelled images with class names and templates for zero-shot, from a data.eval-style config."""
    if cfg.type not in _EVAL_MODULES:
        raise UserError(f"data.type: {cfg.type!r} is not a classification dataset "
                        f"(expected one of {', '.join(EVAL_TYPES)})")
    module = importlib.import_module(_EVAL_MODULES[cfg.type])
    return module.load_eval(cfg) if cfg.type == "shapes" else module.load(cfg)
