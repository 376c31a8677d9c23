"""WiSE-FT (Wortsman et al. 2022): the weights (1 - alpha) * zero-shot + alpha * fine-tuned.

Fine-tuning buys accuracy on the target data and costs robustness elsewhere; a mixture keeps much of both.
Only the model's parameters are mixed: a training checkpoint's optimiser state, run position and EMA copy
are left behind (or its EMA copy taken in place of the raw weights), and the result is a plain weights file that
carries its architecture.
"""
from __future__ import annotations

import numpy as np

from clip.model import weights
from clip.model.architectures import expected_shapes, name_of
from clip.model.factory import check_parameters, resolve_config
from launcher.errors import UserError


def load(path: str, what: str, ema_weights: bool = False):
    """(architecture, parameter name -> float array) of a weights or training checkpoint; `ema_weights`: its
    moving averages in place of the raw weights."""
    stored = weights.read(path, what)
    if ema_weights:
        stored = weights.ema_weights(stored, path)
    try:
        config = resolve_config(None, stored, path)
        check_parameters(stored, config, path)
    except UserError as exc:
        raise UserError(f"{what} {path!r}: {exc}") from None
    return config, {name: stored[name].asnumpy() for name in expected_shapes(config)}


def check_same_architecture(first, second, first_path: str, second_path: str) -> None:
    """One line naming the first architecture field in which the two differ."""
    a, b = first.architecture(), second.architecture()
    for key in a:
        if a[key] != b.get(key):
            raise UserError(f"{second_path} is {name_of(second)} ({key} {b.get(key)!r}) but {first_path} is "
                            f"{name_of(first)} ({key} {a[key]!r}); WiSE-FT mixes two checkpoints of one "
                            f"architecture")


def check_alpha(alpha: float, what: str) -> float:
    if not np.isfinite(alpha) or not 0 <= alpha <= 1:
        raise UserError(f"{what} {alpha!r}: expected a number from 0 (zero-shot) to 1 (fine-tuned)")
    return float(alpha)


def mix(zero_shot: dict, fine_tuned: dict, alpha: float) -> dict:
    """Parameter-wise (1 - alpha) * zero_shot + alpha * fine_tuned in float64, stored in the zero-shot's dtype;
    alpha 0 and 1 return the inputs' arrays themselves (exact, whatever the other holds)."""
    if alpha == 0:
        return dict(zero_shot)
    if alpha == 1:
        return {name: value.astype(zero_shot[name].dtype, copy=False) for name, value in fine_tuned.items()}
    return {name: ((1 - alpha) * value.astype(np.float64) + alpha * fine_tuned[name].astype(np.float64)
                   ).astype(value.dtype) for name, value in zero_shot.items()}


def save(path: str, params: dict, config) -> str:
    """The mixture as a weights file (atomic write, architecture included)."""
    from mindspore import Tensor

    return weights.write(path, [{"name": name, "data": Tensor(value)} for name, value in params.items()],
                         architecture=config)
