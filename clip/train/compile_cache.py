"""MindSpore's compile cache for the train step, made safe: one directory per exact graph, shared by runs.

MindSpore (2.10, CPU) caches compiled graphs with `MS_COMPILER_CACHE_ENABLE=1` and
`MS_COMPILER_CACHE_PATH=DIR` (it adds `rank_<r>/`); a later launch then skips most of the compilation.
But its cache is keyed by the order in which a process compiles graphs, not by what they compute:
measured here, a cell whose Python constant changed, a model with one more layer, an input of another
shape, or two graphs compiled in the other order all silently reuse the stale graph and give wrong
numbers. So this module
- keys the directory by everything the train step's graph depends on: the model's architecture as built
  (not the name, checkpoint path or JSON file it came from: a file re-written with another architecture
  gets another key, the same architecture from another path the same one), the resolved config (less the
  fields that only steer the loop or feed the graph as inputs: output paths, data, the learning-rate
  schedule, logging, saving, evaluation cadence), world size, rank, device target, MindSpore and Python
  versions, a hash of the clip and launcher sources (Python and C++), the device profile in use
  (clip.profiles: its name, its kernel library and the transport the ranks actually agreed on, so the key
  is computed after the step's collectives are set up and before the step compiles; the variables that
  choose them are keyed by that outcome) and every other environment variable that changes the graph
  (GRAPH_ENV); `<key>.json` beside each directory shows what it holds;
- caches only the graphs compiled during the first train-step call (one for the plain step; one per phase,
  always in the same order, for the accumulating step) and turns caching off right after it, so that
  evaluation graphs, whose order and shapes depend on the data, are always compiled afresh;
- lets one process write a key's directory at a time (an flock on `<key>.lock`) and marks it complete
  only after the first step returned, so a job never reads a half-written graph. A directory left
  incomplete by a crashed writer is wiped by the next one; a job that finds another one writing
  compiles without the cache.
Because the key is exact, the cache is shared by every run of the user: `$CLIP_COMPILE_CACHE_DIR`,
by default `~/.cache/mindclip/compile`, so a restart, a resume or the same job in a new output_dir starts
its first step warm. `CLIP_COMPILE_CACHE_DIR=off` turns it off; a user who sets `MS_COMPILER_CACHE_PATH`
or `MS_COMPILER_CACHE_ENABLE` takes over and this module stays out of the way. A program whose main module
is not a file (`python -c`, `python -` reading stdin, an interactive session) trains without the cache:
MindSpore's cache opens `sys.argv[0]` as a source file and would fail on it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Optional

ENABLE, PATH = "MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH"
ROOT_ENV = "CLIP_COMPILE_CACHE_DIR"
OFF = "off"
COMPLETE = "complete"
# Config fields that never reach the train step's graph: where files go, how often the loop logs, saves
# and evaluates, when this invocation stops, which data feed it (shapes come from the model and the batch
# size), the learning-rate schedule (a tensor input of every step) and the first loss scale (a Parameter's value).
LOOP_ONLY = ("output_dir", "data", "train.resume", "train.overwrite", "train.stop_after", "train.log_every",
             "train.save_every", "train.keep_last", "train.eval_every", "train.eval_batch_size", "train.num_workers",
             "train.lr", "train.lr_schedule", "train.min_lr", "train.warmup_steps", "train.max_steps",
             "train.epochs", "train.tensorboard", "train.max_skipped_steps", "train.resume_reset_scaler",
             "train.loss_scale_init")
# Where the model comes from: the architecture it resolves to is keyed instead (the tokenizer only makes inputs).
MODEL_SOURCE = ("model.name", "model.checkpoint", "model.ema_weights", "model.tokenizer", "model.image_size")
_SOURCE_PACKAGES = ("clip", "launcher")
# Environment variables that change the train step's graph, so that a run with another value never reads a
# graph compiled without it: MindSpore's developer and feature switches, whole families because each release
# adds some (MS_DEV_*: JIT syntax level, runtime config, kernel packets, graph-kernel flags, ...; MS_ENABLE_*);
# and its named variables that choose kernels, formats, fusion, JIT modules or memory allocation. Listing one
# that turns out not to matter costs a cold compile, never a wrong graph. The device profile's own switches
# (CLIP_PROFILE, CLIP_SHM_COLLECTIVES) are keyed by what they resolve to (`versions`: profile, transport,
# kernels), so `auto` and an unset variable, which choose the same pieces, share a graph.
GRAPH_ENV = ("MS_ALLOC_CONF", "MS_FORMAT_MODE", "MS_JIT", "MS_JIT_MODULES",
             "MS_JIT_IGNORE_MODULES", "MS_SIMULATION_LEVEL", "MS_ASCEND_CHECK_OVERFLOW_MODE", "MS_COMM_COMPILER_OPT",
             "MS_CUSTOM_AOT_WHITE_LIST", "MS_OPTIMIZE_OP_IMPL", "MS_SYMBOL_ENGINE_OPTIMIZE", "MS_GPTO_OPTIONS",
             "MS_AUTO_DYNAMIC_SHAPE_ENABLE", "MS_DISABLE_INTERNAL_KERNELS_LIST", "MS_INTERNAL_DISABLE_CUSTOM_KERNEL_LIST",
             "MS_INTERNAL_ENABLE_CUSTOM_KERNEL_LIST", "GRAPH_OP_RUN")
GRAPH_ENV_PREFIXES = ("MS_DEV_", "MS_ENABLE_")


def graph_fields(config: Mapping) -> dict:
    """The resolved config without LOOP_ONLY and MODEL_SOURCE fields (pure)."""
    kept = json.loads(json.dumps(config, default=str))
    for dotted in LOOP_ONLY + MODEL_SOURCE:
        *parents, leaf = dotted.split(".")
        node = kept
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return kept


def graph_environment(env: Mapping[str, str]) -> dict:
    """The variables of `env` that change the graph (GRAPH_ENV), with their values (pure)."""
    return {name: value for name, value in sorted(env.items())
            if name in GRAPH_ENV or name.startswith(GRAPH_ENV_PREFIXES)}


def key_inputs(config: Mapping, architecture: Mapping, world_size: int, rank: int, versions: Mapping) -> dict:
    """Everything the key is made of (pure); `architecture` is the built model's description (CLIPConfig.to_dict),
    `versions` holds the versions, the profile and the environment."""
    return {"config": graph_fields(config), "architecture": json.loads(json.dumps(architecture, default=str)),
            "world_size": world_size, "rank": rank, "versions": dict(versions)}


def cache_key(config: Mapping, architecture: Mapping, world_size: int, rank: int, versions: Mapping) -> str:
    """Hex key of the train step's graph (pure): equal keys mean the same graph."""
    blob = json.dumps(key_inputs(config, architecture, world_size, rank, versions), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def main_is_a_file(argv: list) -> bool:
    """Whether MindSpore's cache can read the program's main module (pure): it opens `sys.argv[0]` as Python
    source, which is "-c" under `python -c` and "-" for a program read from stdin."""
    return bool(argv) and argv[0] not in ("", "-", "-c") and os.path.isfile(argv[0])


def cache_root(env: Mapping[str, str]) -> Optional[str]:
    """Where keyed directories live (pure); None when caching is off or the user owns MindSpore's cache."""
    if ENABLE in env or PATH in env:
        return None
    root = env.get(ROOT_ENV, "")
    if root.strip().lower() == OFF:
        return None
    return root or os.path.join(os.path.expanduser("~"), ".cache", "mindclip", "compile")


def source_hash(root: Optional[Path] = None) -> str:
    """Hash of the sources the graphs are built from: the Python, and the C++ of clip.native."""
    root = root or Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in _SOURCE_PACKAGES:
        for path in sorted(p for pattern in ("*.py", "*.cc") for p in (root / package).rglob(pattern)):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def versions(env: Mapping[str, str] = os.environ) -> dict:
    """What the graph depends on beyond the config: versions, sources, the device profile and the environment."""
    import mindspore as ms

    from clip import profiles
    # The device profile decides the graph's pieces: its name, transport and kernel library are in the key.
    return {"mindspore": ms.__version__, "python": platform.python_version(), "sources": source_hash(),
            "device_target": ms.get_context("device_target"), **profiles.cache_fields(),
            "environment": graph_environment(env)}


@dataclass
class Claim:
    """A key's directory in use by this process; `lock` is held while this process writes it."""
    path: str
    lock: Optional[IO] = None


def claim(root: str, key: str) -> Optional[Claim]:
    """Read a complete directory, or become its only writer; None when another process is writing it
    (or the root cannot be created): that run compiles without the cache."""
    path = os.path.join(root, key)
    if os.path.exists(os.path.join(path, COMPLETE)):
        return Claim(path)
    try:
        os.makedirs(root, exist_ok=True)
        lock = open(path + ".lock", "a")
    except OSError as err:
        print(f"warning: {ROOT_ENV}={root}: cannot write there ({err.strerror}); compiling without the cache",
              file=sys.stderr)
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    if os.path.exists(os.path.join(path, COMPLETE)):  # finished while we waited for the lock
        lock.close()
        return Claim(path)
    shutil.rmtree(path, ignore_errors=True)  # what a crashed writer left
    return Claim(path, lock)


def enable_for_train_step(config: Mapping, architecture: Mapping, world_size: int, rank: int,
                          env=os.environ) -> Optional[Claim]:
    """Point MindSpore's cache at this graph's directory before the train step compiles, and after its
    collectives are set up (the transport is part of the key); None when the cache is off, owned by the user,
    being written by another process, or when the main module is not a file."""
    root = cache_root(env)
    if root is None or not main_is_a_file(sys.argv):
        return None
    inputs = key_inputs(config, architecture, world_size, rank, versions(env))
    key = cache_key(config, architecture, world_size, rank, inputs["versions"])
    held = claim(root, key)
    if held is not None:
        env[ENABLE], env[PATH] = "1", held.path
        if held.lock is not None:  # the writer says what the directory holds
            _write_json(os.path.join(root, key + ".json"), inputs)
    return held


def _write_json(path: str, value: dict) -> None:
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # only a description: the cache works without it


def stop_caching(held: Optional[Claim], env=os.environ) -> None:
    """After the train step's first call: mark a written directory complete and release it; later graphs
    (evaluation) are compiled, never cached."""
    if held is None:
        return
    env[ENABLE] = "0"
    if held.lock is not None:
        if any(files for _, _, files in os.walk(held.path)):  # MindSpore wrote the graph
            Path(held.path, COMPLETE).touch()
        held.lock.close()
        held.lock = None
