"""Training precision (`train.precision`: fp32, fp16, bf16) and fp16's dynamic loss scaling.

All modes keep float32 master weights and optimiser state; fp16/bf16 only change the towers' compute dtype
(LayerNorm, softmax, the loss and the gradient all-reduce stay float32, see clip.model). fp16 gradients
underflow without loss scaling, so fp16 multiplies the loss by a scale S before the backward pass and divides
the gradients by S after the all-reduce. The scale follows torch's GradScaler rules: start at
`train.loss_scale_init` (2^16), halve on a step whose all-reduced gradient is not finite (that step is
skipped: no parameter, moment or step count changes), double after GROWTH_INTERVAL finite steps in a row,
never below 1. Because the decision is taken on the all-reduced gradient, every rank skips the same steps.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from launcher.errors import UserError

MODEL_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
GROWTH_INTERVAL = 1000
MIN_SCALE = 1.0
SCALER_STATE = ("loss_scale", "loss_scale_good_steps", "skipped_steps", "skipped_in_a_row")


def model_dtype(precision: str, configured_dtype: str) -> str:
    """The towers' compute dtype for a training precision. `model.dtype` used to choose it: a config that
    still sets it to something else than float32 must say the same as train.precision."""
    wanted = MODEL_DTYPE[precision]
    if configured_dtype not in ("float32", wanted):
        names = {v: k for k, v in MODEL_DTYPE.items()}
        raise UserError(f"model.dtype: {configured_dtype} no longer sets the training precision; use "
                        f"train.precision: {names.get(configured_dtype, 'fp32')} (train.precision is {precision})")
    return wanted


def check_resume(stored: str, current: str, reset_scaler: bool, path: str) -> None:
    """Resuming under another precision changes the arithmetic of the run: refuse unless asked for."""
    if stored != current and not reset_scaler:
        raise UserError(f"train.resume: {path!r} was trained with train.precision {stored}, this run uses "
                        f"{current}; set train.precision: {stored} or train.resume_reset_scaler: true")


class LossScaler(nn.Cell):
    """Dynamic loss-scale state (Parameters, so checkpoints carry them) and its update rule, usable eagerly
    and inside a compiled train step."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_interval: int = GROWTH_INTERVAL):
        super().__init__(auto_prefix=False)
        self.scale = Parameter(Tensor(float(init_scale), ms.float32), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.skipped = Parameter(Tensor(0, ms.int32), name="skipped_steps", requires_grad=False)
        self.in_a_row = Parameter(Tensor(0, ms.int32), name="skipped_in_a_row", requires_grad=False)
        self.growth_interval = growth_interval

    def construct(self, finite):
        """Advance the state after a step; `finite` is a bool scalar Tensor. Returns the new scale."""
        good = ops.select(finite, self.good_steps + 1, ops.zeros_like(self.good_steps))
        grow = good >= self.growth_interval
        scale = ops.select(finite, ops.select(grow, self.scale * 2.0, self.scale),
                           ops.maximum(self.scale * 0.5, MIN_SCALE))
        missed = 1 - finite.astype(ms.int32)
        ops.assign(self.good_steps, ops.select(grow, ops.zeros_like(good), good))
        ops.assign(self.skipped, self.skipped + missed)
        ops.assign(self.in_a_row, (self.in_a_row + missed) * missed)
        return ops.assign(self.scale, scale)
