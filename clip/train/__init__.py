"""Training: the loop (`python -m clip.train`), the one train step, accumulation, optimiser, precision,
recompute, checkpoints, the run log, the compile cache and the checks made before anything is written."""
import importlib

_EXPORTS = {
    "train": "clip.train.loop",
    "main": "clip.train.loop",
    "NetWithLoss": "clip.train.step",
    "TrainStep": "clip.train.step",
    "build_train_step": "clip.train.step",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
