"""Data-parallel plumbing: the only clip module that knows that Ascend, GPU and CPU clusters differ.

Workers learn their rank and world size from the environment the launcher sets; which variables each
start-up mode (HCCL rank table, MindSpore dynamic cluster, single card) writes and how they read back is
defined once, in common.backends. This module turns that reading into MindSpore calls.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Mapping, Optional

import mindspore as ms
import numpy as np
from mindspore import communication, nn, ops

from clip import profiles
from launcher import backends
from launcher.backends import ranktable
from launcher.backends.env import EnvPlan
from launcher.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Who this process is in the data-parallel job. ``backend`` is "none" for a single card."""
    rank: int
    world_size: int
    backend: str
    device_target: str


def plan_from_env(env: Mapping[str, str], device_target: Optional[str] = None) -> EnvPlan:
    """Decide start-up mode, backend and expected rank from environment variables (pure).

    The variables are those the launcher wrote; each start-up mode's module in common.backends owns both.
    """
    return backends.read_env(env, device_target)


_INFO: Optional[DistInfo] = None


def init_from_env(device_target: Optional[str] = None) -> DistInfo:
    """Initialise communication as the environment says, once per process (later calls return the same).

    ``device_target`` defaults to Ascend for a rank table, CPU for a dynamic cluster, and MindSpore's
    current device for a single card. A dynamic-cluster scheduler process (``MS_ROLE=MS_SCHED``) serves
    the cluster inside MindSpore's ``init()``, which exits the process when the workers are done: the
    call never returns there.
    """
    global _INFO
    if _INFO is not None:
        return _INFO
    plan = plan_from_env(os.environ, device_target)
    if plan.rank_table is not None and not os.path.isfile(plan.rank_table):
        raise UserError(f"{ranktable.RANK_TABLE_FILE}={plan.rank_table}: no such file; expected a rank table JSON")
    if plan.device_target is not None:
        ms.set_device(plan.device_target, plan.device_id)
    if plan.role == "scheduler":
        communication.init()
        raise SystemExit(0)
    if plan.startup == "single":
        _INFO = DistInfo(0, 1, "none", ms.get_context("device_target"))
        return _INFO
    communication.init(plan.backend)
    rank, size = communication.get_rank(), communication.get_group_size()
    if size != plan.world_size:
        raise RuntimeError(f"MindSpore formed a cluster of {size} workers but the environment asked for "
                           f"{plan.world_size}")
    _INFO = DistInfo(rank, size, plan.backend, plan.device_target)
    return _INFO


def get_rank() -> int:
    """This process's global rank (0 on a single card)."""
    return init_from_env().rank


def get_world_size() -> int:
    """Number of data-parallel workers (1 on a single card)."""
    return init_from_env().world_size


def world_group() -> str:
    """Name of the all-ranks group; primitives default to "hccl_world_group", CPU's is "mccl_world_group"."""
    return communication.GlobalComm.WORLD_COMM_GROUP


_PRIMITIVES: dict = {}


def _primitive(kind: str):
    """Collectives used from Python are created once, after init()."""
    if kind not in _PRIMITIVES:
        group = world_group()
        _PRIMITIVES[kind] = ops.AllGather(group) if kind == "all_gather" else ops.AllReduce("sum", group)
    return _PRIMITIVES[kind]


def _gather_rows(array: np.ndarray) -> np.ndarray:
    """[W, *shape]: every rank's array, bit-exact.

    The bytes travel as int32 words: measured on CPU (MindSpore 2.10), AllGather silently truncates
    int64 and float64 to 32 bits, while int32 arrives intact.
    """
    words = np.ascontiguousarray(array.reshape(-1)).view(np.int32)[None]
    gathered = _primitive("all_gather")(ms.Tensor(words)).asnumpy()
    return np.ascontiguousarray(gathered).view(array.dtype).reshape((-1,) + array.shape)


def barrier() -> None:
    """Wait until every rank gets here (a one-element all-reduce: CPU has no Barrier kernel)."""
    if get_world_size() > 1:
        _primitive("all_reduce")(ms.Tensor(np.zeros(1, np.float32))).asnumpy()


def all_reduce_sum(value):
    """Sum of ``value`` over ranks, for logging and counting (not for gradients, see ``grad_reducer``).

    Returns the same kind: a Python number, a numpy array (widened to int64/float64) or a Tensor (in its
    own dtype). Values are widened, gathered bit-exactly and summed in rank order, so integer counts stay
    exact and every rank gets the bit-identical total (CPU AllReduce would only sum float32).
    """
    array = value.asnumpy() if isinstance(value, ms.Tensor) else np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"all_reduce_sum expects numbers, numpy arrays or Tensors, got {type(value).__name__}")
    wide = array.astype(np.float64 if array.dtype.kind == "f" else np.int64)
    total = wide if get_world_size() == 1 else _gather_rows(wide).sum(axis=0)
    if isinstance(value, ms.Tensor):
        return ms.Tensor(total.astype(array.dtype))
    if isinstance(value, np.ndarray):
        return total
    return total.item() if total.ndim == 0 else total


def _named_params(net):
    return sorted(net.parameters_and_names(), key=lambda item: item[0])


def check_identical_params(net) -> None:
    """Raise if any parameter differs between ranks: a seeding or loading bug would silently fork them."""
    if get_world_size() == 1:
        return
    named = _named_params(net)
    crcs = np.array([zlib.crc32(p.asnumpy().tobytes()) for _, p in named], dtype=np.int64)
    table = _gather_rows(crcs)
    differs = np.nonzero((table != table[0]).any(axis=0))[0]
    if differs.size:
        raise RuntimeError(f"{differs.size} of {len(named)} parameters differ between ranks, first "
                           f"{named[differs[0]][0]}: use the same seed on every rank or broadcast_params(net)")


def broadcast_params(net) -> None:
    """Overwrite every rank's parameters with rank 0's, in place."""
    if get_world_size() == 1:
        return
    broadcast = ops.Broadcast(0, world_group())
    for _, param in _named_params(net):
        # One tensor per call: on CPU a multi-tensor Broadcast returns garbage after the first tensor.
        param.set_data(broadcast((ms.Tensor(param.asnumpy()),))[0])


class _NoReduction(nn.Cell):
    """The gradient reducer of a single worker."""

    def construct(self, grads, tokens=None):
        return grads


def grad_reducer(params, info: Optional[DistInfo] = None) -> nn.Cell:
    """Mean all-reduce of a gradient tuple over ranks (identity for one worker), called as
    `reducer(grads, tokens=None)`; the implementation is the device profile's (clip.profiles).

    The mean pairs with the sum backward of ``AllGatherWithGrad``; docs/loss.md shows why.
    """
    info = info or init_from_env()
    if info.world_size == 1:
        return _NoReduction()
    return profiles.grad_reducer(params, info.world_size, world_group(), step_collectives(info))


def step_collectives(info: DistInfo):
    """The collectives that carry the train step's gradients and gathers when the device profile brings its
    own, else None for MindSpore's. Collective on the first call with W > 1; later calls return the same."""
    return profiles.collectives(info.rank, info.world_size, info.device_target, _gather_rows)


class AllGatherWithGrad(nn.Cell):
    """All-gather along axis 0 whose gradient flows back to the rank that owns each slice.

    Backward is ReduceScatter(SUM) of the incoming gradient: the native kernel on Ascend, and on CPU/GPU
    AllReduce(SUM) followed by this rank's rows (same result; CPU has no ReduceScatter kernel). Every rank
    must pass the same shape. With one worker it is the identity and creates no collective. A ``transport``
    (``step_collectives``) carries both directions instead of MindSpore's collectives.
    """

    def __init__(self, info: Optional[DistInfo] = None, transport=None):
        super().__init__()
        info = info or init_from_env()
        self.world_size = info.world_size
        self.rank = info.rank
        self.use_reduce_scatter = info.backend == "hccl"
        if self.world_size > 1:
            self.all_gather = transport.all_gather if transport else ops.AllGather(world_group())
            if self.use_reduce_scatter:
                self.reduce_scatter = ops.ReduceScatter("sum", world_group())
            else:
                self.all_reduce = transport.all_reduce if transport else ops.AllReduce("sum", world_group())

    def construct(self, x):
        if self.world_size == 1:
            return x
        return self.all_gather(x)

    def bprop(self, x, out, dout):
        if self.world_size == 1:
            return (dout,)
        if self.use_reduce_scatter:
            return (self.reduce_scatter(dout),)
        rows = x.shape[0]
        return (self.all_reduce(dout)[self.rank * rows:(self.rank + 1) * rows],)

