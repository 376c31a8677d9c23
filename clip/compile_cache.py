"""MindSpore's compile cache for the train step, made safe: one directory per exact graph.

MindSpore (2.10, CPU) caches compiled graphs with `MS_COMPILER_CACHE_ENABLE=1` and
`MS_COMPILER_CACHE_PATH=DIR` (it adds `rank_<r>/`); a second launch then skips most of the compilation.
But its cache is keyed by the order in which a process compiles graphs, not by what they compute:
measured here, a cell whose Python constant changed, a model with one more layer, an input of another
shape, or two graphs compiled in the other order all silently reuse the stale graph and give wrong
numbers. So this module
- keys the directory by everything the train step's graph depends on: the resolved config (less the
  fields that only steer the loop: output paths, logging, saving, evaluation cadence, data), world size,
  rank, MindSpore and Python versions and a hash of the clip and common sources;
- caches only the graphs compiled during the first train-step call (one for the plain step; one per phase,
  always in the same order, for the accumulating step) and turns caching off right after it, so that
  evaluation graphs, whose order and shapes depend on the data, are always compiled afresh.
The directory lives under the run's output_dir (`<output_dir>/compile_cache/<key>`), where a resumed or
restarted job finds it; a new run in a new output_dir starts cold. A user who sets
`MS_COMPILER_CACHE_PATH` or `MS_COMPILER_CACHE_ENABLE` takes over and this module stays out of the way.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Mapping, Optional

ENABLE, PATH = "MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH"
DIRNAME = "compile_cache"
# Config fields that never reach the train step's graph: where files go, how often the loop logs, saves
# and evaluates, when this invocation stops, and which data feed it (shapes come from the model).
LOOP_ONLY = ("output_dir", "data", "train.resume", "train.overwrite", "train.stop_after", "train.log_every",
             "train.save_every", "train.keep_last", "train.eval_every", "train.eval_batch_size", "train.num_workers")
_SOURCE_PACKAGES = ("clip", "common")


def graph_fields(config: Mapping) -> dict:
    """The resolved config without LOOP_ONLY fields (pure)."""
    kept = json.loads(json.dumps(config, default=str))
    for dotted in LOOP_ONLY:
        *parents, leaf = dotted.split(".")
        node = kept
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return kept


def cache_key(config: Mapping, world_size: int, rank: int, versions: Mapping[str, str]) -> str:
    """Hex key of the train step's graph (pure): equal keys mean the same graph."""
    blob = json.dumps({"config": graph_fields(config), "world_size": world_size, "rank": rank,
                       "versions": dict(versions)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def source_hash(root: Optional[Path] = None) -> str:
    """Hash of the Python sources the graphs are built from."""
    root = root or Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in _SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def versions() -> dict:
    import mindspore as ms
    return {"mindspore": ms.__version__, "python": platform.python_version(), "sources": source_hash()}


def enable_for_train_step(output_dir: str, config: Mapping, world_size: int, rank: int,
                          env=os.environ) -> Optional[str]:
    """Point MindSpore's cache at this graph's directory before the train step compiles; returns it
    (None when the user configured the cache through the environment)."""
    if ENABLE in env or PATH in env:
        return None
    path = os.path.join(output_dir, DIRNAME, cache_key(config, world_size, rank, versions()))
    env[ENABLE], env[PATH] = "1", path
    return path


def stop_caching(path: Optional[str], env=os.environ) -> None:
    """After the train step's first call: later graphs (evaluation) are compiled, never cached."""
    if path is not None:
        env[ENABLE] = "0"
