"""Losses over the global batch."""
import importlib

_EXPORTS = {
    "ContrastiveLoss": "clip.loss.contrastive",
    "clamp_logit_scale": "clip.loss.contrastive",
    "full_loss": "clip.loss.contrastive",
    "local_loss": "clip.loss.contrastive",
    "LOSS_MODES": "clip.loss.modes",
    "LOSS_TYPES": "clip.loss.modes",
    "SigmoidLoss": "clip.loss.sigmoid",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
