"""The model: architectures by name, the towers, tokenizer and preprocessing, weights in and out.

Names are imported on first use, so the pure modules (architectures, tokenizer) load without MindSpore."""
import importlib

_EXPORTS = {
    "CLIPModel": "clip.model.towers",
    "create_model": "clip.model.factory",
    "load_model": "clip.model.factory",
    "model_name": "clip.model.factory",
    "pretrained_checkpoint": "clip.model.factory",
    "checkpoint_shapes": "clip.model.factory",
    "CLIPConfig": "clip.model.architectures",
    "PRESETS": "clip.model.architectures",
    "list_models": "clip.model.architectures",
    "get_config": "clip.model.architectures",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
