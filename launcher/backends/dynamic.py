"""MindSpore dynamic-cluster start-up (CPU by default, GPU or Ascend on request): both sides of the contract.

The launcher starts one scheduler process (on node 0) and gives rank r of W the scheduler's address,
W and r; every worker reads them back and MindSpore's `init()` forms the cluster through the scheduler.
"""
from typing import Dict, Mapping, Optional

from launcher.backends.env import EnvPlan, int_var, rank_var
from launcher.errors import UserError

NAME = "cluster"
STARTUP = "dynamic"
MS_ROLE, MS_SCHED_HOST, MS_SCHED_PORT = "MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT"
MS_WORKER_NUM, MS_NODE_ID, DEVICE_ID = "MS_WORKER_NUM", "MS_NODE_ID", "DEVICE_ID"
VARIABLES = (MS_ROLE, MS_SCHED_HOST, MS_SCHED_PORT, MS_WORKER_NUM, MS_NODE_ID)
WORKER, SCHEDULER = "MS_WORKER", "MS_SCHED"
_ROLES = {WORKER: "worker", SCHEDULER: "scheduler"}
_BACKEND_OF_DEVICE = {"Ascend": "hccl", "GPU": "nccl", "CPU": "mccl"}

# The scheduler only has to join and serve the cluster; MindSpore's own msrun starts a full copy of the
# user's script for it, this one-liner is lighter and never touches user code.
SCHEDULER_CODE = ('import mindspore as ms; ms.set_device("CPU"); '
                  'from mindspore.communication import init; init()')


# MindSpore 2.10 workers learn that every rank has joined only from a heartbeat reply, and heartbeat every
# MS_RETRY_INTERVAL_LOWER..UPPER seconds (3..5 by default), so cluster formation waited up to 5 s after the
# last rank joined. A 1 s interval shortens formation (docs/launcher.md, "Where start-up goes"). A user who
# sets either variable keeps both as MindSpore reads them.
FORMATION_DEFAULTS = {"MS_RETRY_INTERVAL_LOWER": "1", "MS_RETRY_INTERVAL_UPPER": "1"}


def formation_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """Launcher side: FORMATION_DEFAULTS unless `environ` (what the processes inherit) sets one of them."""
    return {} if any(k in environ for k in FORMATION_DEFAULTS) else dict(FORMATION_DEFAULTS)


def _common(host: str, port: int, world_size: int) -> Dict[str, str]:
    return {MS_SCHED_HOST: host, MS_SCHED_PORT: str(port), MS_WORKER_NUM: str(world_size)}


def worker_env(host: str, port: int, world_size: int, rank: int) -> Dict[str, str]:
    """Launcher side: the variables of worker `rank` of `world_size`, scheduler at host:port."""
    return {MS_ROLE: WORKER, **_common(host, port, world_size), MS_NODE_ID: str(rank)}


def scheduler_env(host: str, port: int, world_size: int) -> Dict[str, str]:
    """Launcher side: the variables of the scheduler process (it runs SCHEDULER_CODE)."""
    return {MS_ROLE: SCHEDULER, **_common(host, port, world_size)}


def claims(env: Mapping[str, str]) -> bool:
    return bool(env.get(MS_ROLE))


def read(env: Mapping[str, str], target: Optional[str]) -> EnvPlan:
    """Worker side (the scheduler too): role, rank, world size and device from the variables above."""
    role = _ROLES.get(env[MS_ROLE])
    if role is None:
        raise UserError(f"environment variable {MS_ROLE}={env[MS_ROLE]!r}: expected {WORKER} or {SCHEDULER}")
    if not env.get(MS_SCHED_HOST):
        raise UserError(f"environment variable {MS_SCHED_HOST} is not set; expected the scheduler's address "
                        f"(dynamic cluster, {MS_ROLE} is set)")
    port = int_var(env, MS_SCHED_PORT, 1)
    if port > 65535:
        raise UserError(f"environment variable {MS_SCHED_PORT}={port}: expected a port in 1..65535")
    size = int_var(env, MS_WORKER_NUM, 1)
    rank = rank_var(env, MS_NODE_ID, size, MS_WORKER_NUM) if role == "worker" else 0
    target = target or "CPU"
    device_id = int_var(env, DEVICE_ID, 0, default=0) if target != "CPU" else None
    backend = "mccl" if role == "scheduler" else _BACKEND_OF_DEVICE[target]
    return EnvPlan(STARTUP, role, target, backend, device_id, rank, size)
