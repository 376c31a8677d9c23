"""The optimiser side of a train step: learning-rate schedules, weight-decay groups, torch-semantics AdamW,
global gradient norm and clipping.

`AdamW` is torch.optim.AdamW (bias-corrected moments, decoupled decay `p <- p - lr*wd*p` before the Adam
step) on two in-place primitives per parameter: `ApplyGradientDescent(p, lr*wd, p)` for the decay (matrices
only), then `Adam`, which computes `p <- p - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps')`; with
`eps' = eps * sqrt(1 - b2^t)` that is exactly torch's `lr * m_hat / (sqrt(v_hat) + eps)`. The decay must come
first: decaying after the Adam step would also shrink the step. Both device profiles (clip.profiles) run
it: on the CPU backend this pair is faster than the fused `AdamWeightDecay` kernel (what `nn.AdamWeightDecay`
runs; docs/training.md), and MindSpore's own AdamW (`mint.optim.AdamW`, `FusedAdamW`) does not run on CPU in
graph mode, so its semantics cannot be checked against torch's here.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from clip import profiles
from clip.config import LR_SCHEDULES, OPTIMIZERS

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (total_norm + 1e-6), at most 1


# ---------------------------------------------------------------- pure helpers

def lr_schedule(kind: str, lr: float, min_lr: float, warmup_steps: int, steps: int) -> np.ndarray:
    """Learning rate of each optimiser step t = 0..steps-1 (float64), closed forms:

    warm-up (t < warmup_steps): lr * (t + 1) / warmup_steps;
    then with u = (t - warmup_steps) / (steps - warmup_steps) in [0, 1):
    cosine: min_lr + (lr - min_lr) * (1 + cos(pi u)) / 2; linear: lr - (lr - min_lr) * u; constant: lr.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr schedule {kind!r} is not one of {', '.join(LR_SCHEDULES)}")
    t = np.arange(steps, dtype=np.float64)
    decay_steps = max(steps - warmup_steps, 1)
    u = np.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
    if kind == "cosine":
        after = min_lr + (lr - min_lr) * (1 + np.cos(np.pi * u)) / 2
    elif kind == "linear":
        after = lr - (lr - min_lr) * u
    else:
        after = np.full(steps, lr, np.float64)
    ramp = lr * (t + 1) / max(warmup_steps, 1)
    return np.where(t < warmup_steps, ramp, after)


def decays(name: str, ndim: int) -> bool:
    """Weight decay on matrices only: not on gains, biases, class embedding or logit_scale (as OpenAI)."""
    return ndim >= 2 and "logit_scale" not in name


def lr_scales(names, config, lr: float, lr_image=None, lr_text=None, layer_decay: float = 1.0) -> list[float]:
    """Each parameter's learning rate as a multiple of the schedule's (train.lr's): its tower's peak rate over
    train.lr, times layer_decay ** (L + 1 - layer id) with BEiT's layer ids (clip.model.groups.layer_id: the
    embeddings decay most, the head not at all). Parameters of neither tower (logit_scale) keep 1."""
    from clip.model import groups

    peak = {groups.IMAGE: lr if lr_image is None else lr_image, groups.TEXT: lr if lr_text is None else lr_text}
    scales = []
    for name in names:
        tower = groups.tower_of(name)
        if tower is None:
            scales.append(1.0)
            continue
        layers = groups.tower_layers(config, tower)
        scales.append(peak[tower] / lr * layer_decay ** (layers + 1 - groups.layer_id(name, layers)))
    return scales


# ---------------------------------------------------------------- cells (MindSpore)

class AdamW(nn.Cell):
    """torch.optim.AdamW on MindSpore's Adam primitive plus an in-place decay (see the module docstring).

    `learning_rate` is a Parameter the train step assigns before calling; parameter i steps at
    `learning_rate * lr_scales[i]` (per-tower rates, layer decay; the decoupled decay scales with it, as a torch
    parameter group's own lr does); `global_step` counts applied steps (a skipped fp16 step does not count,
    as torch's GradScaler skips optimizer.step()).
    State names match nn.AdamWeightDecay's (`adam_m.*`, `adam_v.*`, `global_step`), so checkpoints read alike.
    """

    def __init__(self, params, decay_flags, weight_decay: float, beta1: float, beta2: float, eps: float,
                 lr_scales=None):
        super().__init__(auto_prefix=False)
        self.parameters = ParameterTuple(params)
        self.lr_scales = tuple(Tensor(s, ms.float32) for s in (lr_scales or [1.0] * len(params)))
        # Without per-parameter rates every Adam reads the schedule's rate itself: a product per parameter
        # would add two scalar kernels per parameter to every step (docs/benchmarks.md, device profiles).
        self.scaled = any(float(s) != 1.0 for s in (lr_scales or []))
        self.moments1 = self.parameters.clone(prefix="adam_m", init="zeros")
        self.moments2 = self.parameters.clone(prefix="adam_v", init="zeros")
        self.learning_rate = Parameter(Tensor(0.0, ms.float32), name="learning_rate", requires_grad=False)
        self.global_step = Parameter(Tensor([0], ms.int32), name="global_step", requires_grad=False)
        self.decay_flags = tuple(bool(flag) for flag in decay_flags)
        self.weight_decay = Tensor(weight_decay, ms.float32)
        self.beta1 = Tensor(beta1, ms.float32)
        self.beta2 = Tensor(beta2, ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.one = Tensor(1.0, ms.float32)
        self.adam = ops.Adam()
        self.descend = ops.ApplyGradientDescent()
        self.hyper_map = ops.HyperMap()

    def construct(self, gradients, factor=None):
        """One step on `gradients`, each first multiplied by `factor` if given (fp16 unscaling and clipping,
        folded into one product per tensor)."""
        step = self.global_step + 1
        ops.assign(self.global_step, step)
        t = step.astype(ms.float32)[0]
        lr = self.learning_rate
        if self.scaled:
            rates = self.hyper_map(ops.partial(_times, lr), self.lr_scales)
            decay_rates = self.hyper_map(ops.partial(_times, self.weight_decay), rates)
        else:
            rates = (lr,) * len(self.lr_scales)
            decay_rates = (lr * self.weight_decay,) * len(self.lr_scales)
        beta1_power = ops.pow(self.beta1, t)
        beta2_power = ops.pow(self.beta2, t)
        eps = self.eps * ops.sqrt(self.one - beta2_power)
        if factor is None:
            return self.hyper_map(ops.partial(_adamw, self.adam, self.descend, beta1_power, beta2_power,
                                              self.beta1, self.beta2, eps),
                                  self.parameters, self.moments1, self.moments2, gradients, self.decay_flags, rates,
                                  decay_rates)
        return self.hyper_map(ops.partial(_adamw_scaled, self.adam, self.descend, beta1_power, beta2_power,
                                          self.beta1, self.beta2, eps, factor),
                              self.parameters, self.moments1, self.moments2, gradients, self.decay_flags, rates,
                              decay_rates)


_times = ops.MultitypeFuncGraph("times")


@_times.register("Tensor", "Tensor")
def _times_tensor(a, b):
    return a * b


_adamw = ops.MultitypeFuncGraph("adamw")
_adamw_scaled = ops.MultitypeFuncGraph("adamw_scaled")


@_adamw_scaled.register("Function", "Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Tensor", "Bool", "Tensor", "Tensor")
def _adamw_update_scaled(adam, descend, beta1_power, beta2_power, beta1, beta2, eps, factor, param, m, v, gradient,
                         decay, lr, decay_lr):
    # the product is made as its update runs, so no second set of gradients exists at once
    return _adamw_step(adam, descend, beta1_power, beta2_power, beta1, beta2, eps, param, m, v,
                       gradient * factor.astype(gradient.dtype), decay, lr, decay_lr)


@_adamw.register("Function", "Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                 "Tensor", "Tensor", "Bool", "Tensor", "Tensor")
def _adamw_step(adam, descend, beta1_power, beta2_power, beta1, beta2, eps, param, m, v, gradient, decay, lr,
                decay_lr):
    """One parameter's step at its own rate `lr` (`decay_lr` = lr * weight_decay)."""
    if decay:
        param = ops.depend(param, descend(param, decay_lr, param))  # p <- p - lr*wd*p, before the Adam step
    adam(param, m, v, beta1_power, beta2_power, lr, beta1, beta2, eps, gradient.astype(param.dtype))
    return True


def build_optimizer(model, name: str, weight_decay: float, beta1: float, beta2: float, eps: float,
                    lr_scales=None):
    """The configured optimiser over the model's trainable parameters (locked ones are not: no state, no
    decay), decay on matrices only; `lr_scales` (AdamW only) per trainable parameter, see lr_scales()."""
    params = model.trainable_params()
    flags = [decays(p.name, len(p.shape)) for p in params]
    if name == "adamw":
        return AdamW(params, flags, weight_decay, beta1, beta2, eps, lr_scales)
    if lr_scales is not None and any(s != 1.0 for s in lr_scales):
        raise ValueError("per-parameter learning rates need the adamw optimiser")
    if name != "adamweightdecay":
        raise ValueError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
    decay = [p for p, flag in zip(params, flags) if flag]
    no_decay = [p for p, flag in zip(params, flags) if not flag]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"order_params": params}]
    # A float learning rate becomes the Parameter `learning_rate`, which the train step assigns every step.
    return nn.AdamWeightDecay(groups, learning_rate=0.0, beta1=beta1, beta2=beta2, eps=eps)


_scale = ops.MultitypeFuncGraph("scale")


@_scale.register("Tensor", "Tensor")
def _scale_gradient(factor, gradient):
    return gradient * factor.astype(gradient.dtype)


def scale_gradients(hyper_map, factor, gradients):
    """Every gradient times the scalar `factor` (inside a compiled step)."""
    return hyper_map(ops.partial(_scale, factor), gradients)


def clip_coefficient(norm, max_norm: float):
    """torch's clip_grad_norm_ factor: max_norm / (norm + 1e-6), at most 1."""
    return ops.minimum(max_norm / (norm + CLIP_EPS), 1.0)


class GradientUpdate(nn.Cell):
    """What a step does with the all-reduced gradients: divide by the loss scale (fp16), take the global L2
    norm, clip it to `grad_clip_norm` (0 = off), and run the optimiser at learning rate `lr`. With a
    LossScaler the optimiser runs only when the norm is finite (else nothing but the scaler changes), and
    the scaler is advanced. Returns the global norm before clipping (after unscaling).

    `of_parameters`: the gradients are Parameters, the sums of clip.accumulate. Then the norm is taken one
    tensor after the other (see clip.profiles.grad_norm), and with AdamW the unscaling and clipping are one factor that the
    optimiser applies tensor by tensor as it updates, since a scaled copy of all gradients made up front would
    be a second set of gradients in memory (docs/training.md, accumulation memory). The norm of the unscaled
    gradients is then that of the scaled ones divided by the scale. Fresh gradients keep the plain form: there,
    folding saved no memory.
    """

    def __init__(self, optimizer, grad_clip_norm: float = 0.0, scaler=None, of_parameters: bool = False):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.learning_rate = optimizer.learning_rate
        self.grad_norm = profiles.grad_norm(of_parameters)
        self.hyper_map = ops.HyperMap()
        self.clip = grad_clip_norm > 0
        self.max_norm = grad_clip_norm
        self.scaler = scaler
        self.dynamic = scaler is not None
        self.takes_factor = of_parameters and isinstance(optimizer, AdamW)

    def construct(self, grads, lr):
        if self.takes_factor:
            norm, factor = self._norm_and_factor(grads)
            return self._update(grads, lr, norm, factor)
        if self.dynamic:
            grads = scale_gradients(self.hyper_map, 1.0 / self.scaler.scale, grads)
        norm = self.grad_norm(grads)
        if self.clip:
            grads = scale_gradients(self.hyper_map, clip_coefficient(norm, self.max_norm), grads)
        return self._update(grads, lr, norm, None)

    def _norm_and_factor(self, grads):
        factor = None
        norm = self.grad_norm(grads)
        if self.dynamic:
            factor = 1.0 / self.scaler.scale
            norm = norm * factor
        if self.clip:
            coefficient = clip_coefficient(norm, self.max_norm)
            factor = coefficient if factor is None else factor * coefficient
        return norm, factor

    def _update(self, grads, lr, norm, factor):
        grads = ops.depend(grads, ops.assign(self.learning_rate, lr))
        if self.dynamic:
            finite = ops.isfinite(norm)
            if finite:
                norm = ops.depend(norm, self._step(grads, factor))
            return ops.depend(norm, self.scaler(finite))
        return ops.depend(norm, self._step(grads, factor))

    def _step(self, grads, factor):
        if factor is None:
            return self.optimizer(grads)
        return self.optimizer(grads, factor)
