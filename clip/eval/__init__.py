"""Evaluation: embeddings in batches, zero-shot classification, retrieval, prediction, and the
`python -m clip.eval` command."""
import importlib

_EXPORTS = {
    "main": "clip.eval.cli",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
