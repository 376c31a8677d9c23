"""The one reader and writer of MindSpore .ckpt files: model weights, converted weights and training checkpoints
all go through here, so every bad file gets the same one-line error and every write is atomic."""
from __future__ import annotations

import os
from typing import Optional

from launcher.errors import UserError

TEXT_META = {"precision": "fp32"}  # text entries with the value assumed for checkpoints written before them
EMA_PREFIX = "ema"  # a training checkpoint's moving averages (train.ema_decay) are named ema.<parameter>


def write(path: str, save_obj, append_dict: Optional[dict] = None, architecture=None) -> str:
    """The one checkpoint writer: ms.save_checkpoint through launcher.safe_write (temporary file, fsync, rename);
    a failure is one line naming the file and the reason, and MindSpore's own multi-line report of it is held
    back (it would only repeat that line). `architecture` (a CLIPConfig) is stored as JSON under one key, so
    the file alone says which model it is (the activation is not in the shapes)."""
    if architecture is not None:
        from clip.model.architectures import ARCHITECTURE_KEY

        append_dict = {**(append_dict or {}), ARCHITECTURE_KEY: architecture.to_json()}
    import mindspore as ms
    from mindspore import log as ms_log

    from launcher.safe_write import write_with

    def save_to(tmp: str) -> None:
        logger = ms_log._get_logger()  # MindSpore's logger object; its CRITICAL line would precede ours
        disabled, logger.disabled = logger.disabled, True
        try:
            ms.save_checkpoint(save_obj, tmp, append_dict=append_dict)
        finally:
            logger.disabled = disabled

    return write_with(path, save_to, mode=None)


def read(path: str, what: str = "checkpoint") -> dict:
    """Every parameter of a MindSpore checkpoint (name -> Parameter): the one reader of .ckpt files. A missing,
    unreadable or foreign file is a one-line UserError that starts with `what` and names the file."""
    import mindspore as ms

    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a directory, expected a MindSpore .ckpt file")
    if not os.path.isfile(path):
        raise UserError(f"{what} {path!r} does not exist")
    try:
        return ms.load_checkpoint(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError/TypeError for corrupt files
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise UserError(f"{what} {path!r} is not a readable MindSpore checkpoint ({reason})") from None


def shapes(path: str, what: str = "checkpoint") -> dict:
    """Parameter name -> shape of a checkpoint."""
    return parameter_shapes(read(path, what))


def parameter_shapes(stored: dict) -> dict:
    return {name: tuple(p.shape) for name, p in stored.items() if name not in TEXT_META and not isinstance(p, str)}


def ema_weights(stored: dict, path: str) -> dict:
    """`stored` with each moving average `ema.<name>` in place of the raw weight `<name>` it averages and no
    `ema.*` entries left; what has no average (locked parameters, which never change) keeps its stored value."""
    prefix = EMA_PREFIX + "."
    averages = {name[len(prefix):]: value for name, value in stored.items() if name.startswith(prefix)}
    if not averages:
        raise UserError(f"EMA weights (model.ema_weights, --ema-weights): checkpoint {path!r} holds no moving "
                        f"averages (no {prefix}* entries); only a run with train.ema_decay > 0 writes them")
    orphan = sorted(set(averages) - set(stored))
    if orphan:
        raise UserError(f"EMA weights: checkpoint {path!r} has the average {prefix}{orphan[0]} but no parameter "
                        f"{orphan[0]}")
    return {name: averages.get(name, value) for name, value in stored.items() if not name.startswith(prefix)}


def architecture(stored: dict, path: str):
    """The CLIPConfig a checkpoint carries (read()'s result), or None for files written before they did."""
    from clip.model.architectures import ARCHITECTURE_KEY, CLIPConfig

    text = stored.get(ARCHITECTURE_KEY)
    if text is None:
        return None
    if not isinstance(text, str):
        raise UserError(f"checkpoint {path!r}: entry {ARCHITECTURE_KEY!r} is not text")
    return CLIPConfig.from_json(text, f"checkpoint {path!r}")
