"""Validate, then act: the checks a command runs on all of its inputs and on its output location before it
writes or deletes anything, so that a mistake costs seconds and never an earlier run's files."""
from __future__ import annotations

import os
from typing import Optional

from launcher.errors import UserError

EARLIER_RUN = ("config.yaml", "metrics.jsonl", "checkpoints")
PROBE_IMAGES = 8


def check_output_dir(path: str, key: str = "output_dir") -> None:
    """`path` is (or can become) a writable directory."""
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise UserError(f"{key}: {path!r} is a file, expected a directory")
    existing = full
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{key}: {path!r} cannot be created: {existing!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{key}: {path!r}: permission denied (cannot write in {existing!r})")


def check_output_file(path: str, key: str) -> None:
    """`path` can be written as a file: not a directory, in a directory that can be written."""
    if os.path.isdir(path):
        raise UserError(f"{key}: {path!r} is a directory, expected a file")
    check_output_dir(os.path.dirname(os.path.abspath(path)), key)


def earlier_run(output_dir: str) -> list[str]:
    """The files of an earlier training run in output_dir."""
    return [name for name in EARLIER_RUN if os.path.exists(os.path.join(output_dir, name))]


def same_job(cfg) -> bool:
    """An attempt of this very job that stopped before its first checkpoint (the launcher restarting it with
    train.resume: auto): its config.yaml is this config. It starts again from step 0."""
    from clip.config import dump_yaml

    path = os.path.join(cfg.output_dir, "config.yaml")
    if cfg.train.resume != "auto" or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == dump_yaml(cfg)
    except (OSError, UnicodeDecodeError):
        return False


def probe(source, key: str) -> None:
    """Read the first few samples: a dataset none of whose first images can be read is refused now, not
    after the run has started (single unreadable images are replaced later, as always)."""
    from clip.data.base import UnreadableImage

    n = min(len(source), PROBE_IMAGES)
    first = None
    for i in range(n):
        try:
            source[i]
            return
        except UnreadableImage as exc:
            first = first or exc
    if first is not None:
        raise UserError(f"{key}: none of the first {n} images can be read ({first})")


def check_train(cfg, resume_from: Optional[str]) -> None:
    """Everything `python -m clip.train` will read or write: output_dir (and an earlier run in it), data.train,
    data.eval, the resumed run's metrics. Runs on every rank before the cluster forms, so no rank writes first."""
    from clip.data import build_eval_source, build_train_source
    from clip.train import runlog

    check_output_dir(cfg.output_dir)
    found = earlier_run(cfg.output_dir)
    if resume_from is None and found and not cfg.train.overwrite and not same_job(cfg):
        raise UserError(f"output_dir {cfg.output_dir!r} holds an earlier run ({', '.join(found)}); continue it with "
                        f"train.resume: auto, choose another output_dir, or set train.overwrite: true to replace it")
    probe(build_train_source(cfg.data.train), "data.train")
    if cfg.data.eval is not None:
        probe(build_eval_source(cfg.data.eval), "data.eval")
    if resume_from is not None:
        runlog.read(os.path.join(cfg.output_dir, runlog.METRICS))
