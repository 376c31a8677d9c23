"""Device profiles: the one place that chooses which implementation of each train-step piece runs.

- `stock`, the default on Ascend and GPU: MindSpore's own pieces, kept plain. `ops.LayerNorm`, QuickGELU as
  `x * sigmoid(1.702 x)`, `ops.bias_add` with its BiasAddGrad, the global gradient norm as the square root of
  the sum of squares, `nn.DistributedGradReducer(params, mean=True, degree=W)` with MindSpore's own
  all-reduce fusion where the backend has it, and MindSpore's collectives for the loss's gather.
- `native`, the default on CPU: the CPU-only implementations of clip.native, each measured faster there
  (docs/model.md, docs/training.md). Fused LayerNorm and QuickGELU kernels, a bias add whose bias gradient is
  a matmul, a dot-product gradient norm, the bucketed reducer that sends only the token-embedding rows the
  step indexes, and the shared-memory transport for the step's collectives (`CLIP_SHM_COLLECTIVES=off`
  keeps MindSpore's transport within this profile).

`CLIP_PROFILE=auto|native|stock` (default auto) picks one. It is an environment variable so that it reaches
every rank a launcher starts and every evaluation; `stock` on CPU runs, and so tests, the code Ascend runs.

Both profiles use the same optimiser, clip.train.optim.AdamW (torch's AdamW on MindSpore's stock `Adam` and
`ApplyGradientDescent` primitives): `mindspore.mint.optim.AdamW` and `FusedAdamW` fail on CPU in graph mode
("Unsupported op [AdamW] on CPU"), so their semantics cannot be checked against torch's here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import mindspore as ms
from mindspore import nn, ops

from clip.native import grad_norm as native_grad_norm
from clip.native import kernels, layers, shm_collectives
from clip.native.buckets import BucketedGradReducer
from launcher.errors import UserError

PROFILE_ENV = "CLIP_PROFILE"
CHOICES = ("auto", "native", "stock")
NATIVE_TARGETS = ("CPU",)
EMBEDDING = "token_embedding.weight"  # the table the native reducer sends as rows


@dataclass(frozen=True)
class Profile:
    """What runs: `name` is native or stock; `transport` carries the step's collectives on more than one
    rank: "shm" (shared memory, native only) or "mindspore"."""
    name: str
    transport: str


STOCK = Profile("stock", "mindspore")


# ---------------------------------------------------------------- choice (pure)

def choose(env: Mapping[str, str], device_target: str) -> Profile:
    """The profile `env` asks for on `device_target`: auto is native on CPU, stock elsewhere."""
    asked = env.get(PROFILE_ENV, "").strip().lower() or "auto"
    if asked not in CHOICES:
        raise UserError(f"{PROFILE_ENV}={env[PROFILE_ENV]!r}: expected one of {', '.join(CHOICES)}")
    if asked == "native" and device_target not in NATIVE_TARGETS:
        raise UserError(f"{PROFILE_ENV}=native runs on {', '.join(NATIVE_TARGETS)} only, not {device_target}; "
                        f"use auto or stock")
    if asked == "stock" or (asked == "auto" and device_target not in NATIVE_TARGETS):
        return STOCK
    return Profile("native", "mindspore" if shm_collectives.switched_off(env) else "shm")


_CONNECTED: dict = {}


def active() -> Profile:
    """This process's profile on MindSpore's current device; its transport is the one in use once the step's
    collectives are set up (the shared segment may turn out unusable), the one asked for before."""
    profile = choose(os.environ, ms.get_context("device_target"))
    if profile.name == "native" and "transport" in _CONNECTED:
        return Profile(profile.name, "shm" if _CONNECTED["transport"] is not None else "mindspore")
    return profile


def cache_fields() -> dict:
    """What of the profile a compiled graph depends on: its name, its transport and the kernel library the
    graph names ("off" for MindSpore's ops)."""
    profile = active()
    library = kernels.library() if profile.name == "native" else None
    return {"profile": profile.name, "transport": profile.transport, "kernels": library or "off"}


# ---------------------------------------------------------------- the pieces

def layer_norm(eps: float, profile: Optional[Profile] = None) -> nn.Cell:
    """`(x, gamma, beta) -> y`, LayerNorm over the last axis of a float32 x."""
    if (profile or active()).name == "native":
        op = kernels.layer_norm()
        if op is not None:
            return layers.LayerNorm(op, eps)
    return StockLayerNorm(eps)


def quick_gelu(compute_dtype=ms.float32, profile: Optional[Profile] = None) -> nn.Cell:
    """`x -> x * sigmoid(1.702 x)` in `compute_dtype`."""
    if (profile or active()).name == "native" and compute_dtype == ms.float32:
        op = kernels.quick_gelu()
        if op is not None:
            return layers.QuickGELU(op)
    return StockQuickGELU()


def bias_add(profile: Optional[Profile] = None) -> nn.Cell:
    """`(x, bias) -> x + bias` along the last axis of a 2-D x."""
    return layers.BiasAdd() if (profile or active()).name == "native" else StockBiasAdd()


def grad_norm(of_parameters: bool = False, profile: Optional[Profile] = None) -> nn.Cell:
    """`gradients -> global L2 norm` in float32; `of_parameters`: the gradients are Parameters (sums)."""
    if (profile or active()).name == "native":
        return native_grad_norm.GradNorm(of_parameters)
    return StockGradNorm()


def collectives(rank: int, world_size: int, device_target: str, gather_rows: Callable):
    """The pair (`all_reduce`, `all_gather`) that carries the step's collectives instead of MindSpore's, or
    None for MindSpore's. Collective on the first call of a native job on several ranks (the ranks agree
    through `gather_rows` whether every one can use the shared segment); later calls return the same."""
    if active().name != "native" or world_size == 1:
        return None
    if "transport" not in _CONNECTED:
        _CONNECTED["transport"] = shm_collectives.connect(rank, world_size, device_target, gather_rows)
    return _CONNECTED["transport"]


def grad_reducer(params, degree: int, group: str, transport=None, profile: Optional[Profile] = None) -> nn.Cell:
    """Mean all-reduce of a gradient tuple over `degree` ranks, called as `reducer(grads, tokens=None)`;
    `transport` is what `collectives` returned."""
    if (profile or active()).name == "native":
        return BucketedGradReducer(params, degree, group, embedding=EMBEDDING, transport=transport)
    return StockGradReducer(params, degree, group)


# ---------------------------------------------------------------- the stock pieces

class StockLayerNorm(nn.Cell):
    def __init__(self, eps: float):
        super().__init__()
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x, gamma, beta):
        y, _, _ = self.norm(x, gamma, beta)
        return y


class StockQuickGELU(nn.Cell):
    def construct(self, x):
        return x * ops.sigmoid(1.702 * x)


class StockBiasAdd(nn.Cell):
    def construct(self, x, bias):
        return ops.bias_add(x, bias)


_square_sum = ops.MultitypeFuncGraph("square_sum")


@_square_sum.register("Tensor")
def _stock_square_sum(gradient):
    return ops.square(gradient.astype(ms.float32)).sum()


class StockGradNorm(nn.Cell):
    """sqrt(sum over gradients of sum(g^2)), in float32."""

    def __init__(self):
        super().__init__()
        self.hyper_map = ops.HyperMap()

    def construct(self, gradients):
        return ops.sqrt(ops.addn(self.hyper_map(_square_sum, gradients)))


class StockGradReducer(nn.Cell):
    """MindSpore's `nn.DistributedGradReducer(params, mean=True, degree=W)`, with the reducer call of the step
    (the step's tokens, which it does not need)."""

    def __init__(self, params, degree: int, group: str):
        super().__init__(auto_prefix=False)
        self.reducer = nn.DistributedGradReducer(params, mean=True, degree=degree, group=group)

    def construct(self, grads, tokens=None):
        return self.reducer(grads)
