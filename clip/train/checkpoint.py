"""Training checkpoints: atomic save on rank 0, keep the last K, resume exactly.

A checkpoint holds the model parameters under their OpenAI names (so `create_model(checkpoint=...)`,
`clip.eval` and `clip.predict` load it directly), the optimiser state (`adam_m.*`, `adam_v.*`,
`global_step`), the position of the run (`step`, `epoch`, `step_in_epoch`, `global_batch`, `seed`), the
training `precision` and, in fp16, the loss scaler's state (`loss_scale`, `loss_scale_good_steps`,
`skipped_steps`, `skipped_in_a_row`), and with `train.ema_decay` the moving averages of the trainable weights
(`ema.*`, clip.train.ema).
The model's architecture is stored too (JSON, clip.model.weights; files written before it have none), so a
checkpoint alone builds its model and a resume with another model is refused.
The learning rate is not stored: it is recomputed from the config.
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Iterable, Optional

from clip.model import weights
from clip.model.architectures import ARCHITECTURE_KEY
from clip.model.weights import TEXT_META, read, write
from launcher.errors import UserError

LAST = "last.ckpt"
_STEP_RE = re.compile(r"^step_(\d+)\.ckpt$")
META_KEYS = ("step", "epoch", "step_in_epoch", "global_batch", "seed")
NOT_STORED = ("learning_rate",)


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def step_file(step: int) -> str:
    return f"step_{step:08d}.ckpt"


def step_of(filename: str) -> Optional[int]:
    """The step of a step checkpoint's file name, None for any other file."""
    match = _STEP_RE.match(filename)
    return int(match.group(1)) if match else None


def to_prune(filenames: Iterable[str], keep_last: int) -> list[str]:
    """Step checkpoints beyond the newest `keep_last`, oldest first."""
    steps = sorted((s, f) for f in filenames if (s := step_of(f)) is not None)
    return [f for _, f in steps[:max(len(steps) - keep_last, 0)]]


def resume_path(resume: str, output_dir: str) -> Optional[str]:
    """Which checkpoint `train.resume` means: auto = this run's last.ckpt if there is one."""
    if resume == "none":
        return None
    if resume == "auto":
        path = os.path.join(checkpoint_dir(output_dir), LAST)
        return path if os.path.isfile(path) else None
    return resume


def unique_parameters(cells) -> list:
    """Parameters of the given cells, each once (the optimiser re-lists the model's), minus NOT_STORED."""
    seen, params = set(), []
    for cell in cells:
        for p in cell.get_parameters():
            if p.name not in seen and p.name not in NOT_STORED:
                seen.add(p.name)
                params.append(p)
    return params


def save(params: list, output_dir: str, meta: dict, keep_last: int, architecture=None) -> str:
    """Write step_<n>.ckpt through a temporary file, point last.ckpt at it (hard link, rename), prune.

    A crash at any moment leaves either the previous last.ckpt or the new one, never a partial file."""
    from launcher.safe_write import link_atomic

    directory = checkpoint_dir(output_dir)
    final = os.path.join(directory, step_file(meta["step"]))
    write(final, [{"name": p.name, "data": p} for p in params],
          {**{k: int(meta[k]) for k in META_KEYS}, **{k: str(meta.get(k, default)) for k, default in TEXT_META.items()}},
          architecture=architecture)
    link_atomic(final, os.path.join(directory, LAST))
    for name in to_prune(os.listdir(directory), keep_last):
        os.remove(os.path.join(directory, name))
    return final


def remove_leftovers(output_dir: str) -> list[str]:
    """Remove the temporary files a killed attempt of this run left in output_dir and its checkpoints (a
    SIGKILL mid-save leaves a partial checkpoint under a hidden temporary name, which no later save would
    replace, since the next one has another step's name); returns them. Rank 0 calls it before writing
    anything: the launcher starts an attempt only once every process of the previous one is gone, and a
    run's output_dir has no other writer."""
    from launcher.safe_write import leftover_temporaries

    removed = leftover_temporaries(output_dir) + leftover_temporaries(checkpoint_dir(output_dir))
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return removed


def load(path: str) -> tuple[dict, dict]:
    """(parameter name -> Parameter, run position) from a checkpoint; a bad file is a UserError naming it."""
    stored = read(path, "train.resume:")
    missing = [k for k in META_KEYS if k not in stored]
    if missing:
        raise UserError(f"train.resume: {path!r} is not a training checkpoint (no {', '.join(missing)}); "
                        f"use it as model.checkpoint instead")
    meta = {k: int(stored.pop(k).asnumpy()) for k in META_KEYS}
    meta.update({k: str(stored.pop(k, default)) for k, default in TEXT_META.items()})
    meta["architecture"] = weights.architecture(stored, path)
    stored.pop(ARCHITECTURE_KEY, None)
    return stored, meta


def check_architecture(meta: dict, config, path: str) -> None:
    """A resumed run's model must be the one the checkpoint was trained as (older files carry none)."""
    carried = meta.get("architecture")
    if carried is not None and carried.architecture() != config.architecture():
        from clip.model.architectures import name_of

        key = next(k for k, v in carried.architecture().items() if config.architecture()[k] != v)
        raise UserError(f"train.resume: {path!r} was trained as {name_of(carried)} ({key} {getattr(carried, key)!r}); "
                        f"this run builds {name_of(config)} ({key} {getattr(config, key)!r}); set model.name / "
                        f"model.checkpoint to match or train.resume: none")


def restore(params: list, stored: dict, path: str) -> None:
    """Copy stored values into the live parameters; every parameter must be there with its shape."""
    for p in params:
        if p.name not in stored:
            raise UserError(f"train.resume: {path!r} has no parameter {p.name!r}; was it written by another "
                            f"model or optimiser?")
        value = stored[p.name]
        if tuple(value.shape) != tuple(p.shape):
            raise UserError(f"train.resume: {path!r} parameter {p.name!r} has shape {tuple(value.shape)}, "
                            f"the model expects {tuple(p.shape)}")
        p.set_data(value.astype(p.dtype) if value.dtype != p.dtype else value)
