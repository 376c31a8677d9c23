"""Datasets: config, source contracts, and the builders the training and evaluation code call."""
from __future__ import annotations

from clip.data.base import CaptionSource, ClassificationSource, DatasetConfig, UnreadableImage
from clip.data.registry import DATASETS, loader, types_for
from launcher.errors import UserError

__all__ = ["DatasetConfig", "CaptionSource", "ClassificationSource", "UnreadableImage",
           "build_train_source", "build_eval_source", "TRAIN_TYPES", "EVAL_TYPES", "DATASETS"]

TRAIN_TYPES = types_for("train")
EVAL_TYPES = types_for("eval")


def build_train_source(cfg: DatasetConfig) -> CaptionSource:
    """Image-caption pairs for training (or retrieval) from a data.train-style config."""
    if cfg.type not in TRAIN_TYPES:
        raise UserError(f"data.type: {cfg.type!r} is not a caption dataset (expected one of {', '.join(TRAIN_TYPES)})")
    return loader(cfg.type, "train")(cfg)


def build_eval_source(cfg: DatasetConfig) -> ClassificationSource:
    """Labelled images with class names and templates for zero-shot, from a data.eval-style config."""
    if cfg.type not in EVAL_TYPES:
        raise UserError(f"data.type: {cfg.type!r} is not a classification dataset "
                        f"(expected one of {', '.join(EVAL_TYPES)})")
    return loader(cfg.type, "eval")(cfg)
