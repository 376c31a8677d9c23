"""CLIP on MindSpore that trains correctly on many cards.

Heavy modules (MindSpore) are imported on first use, so `import clip` and the config tools stay fast.
"""
import importlib

_EXPORTS = {
    "create_model": "clip.model.factory",
    "CLIPModel": "clip.model.towers",
    "CLIPConfig": "clip.model.architectures",
    "list_models": "clip.model.architectures",
    "tokenize": "clip.model.tokenizer",
    "image_transform": "clip.model.transforms",
    "pipeline": "clip.eval.predict",
    "Trainer": "clip.api.trainer",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clip' has no attribute {name!r}")
