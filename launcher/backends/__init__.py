"""Start-up modes ("backends"): each module owns both sides of the launcher/worker contract.

A backend module has NAME, STARTUP, VARIABLES (the names it writes), `worker_env(...)` (launcher side:
the variables of rank r of W), `claims(env)` and `read(env, device_target) -> EnvPlan` (worker side).
Pure Python, no MindSpore: the launcher writes with it, clip.parallel.distributed reads with it.
"""
from typing import Mapping, Optional, Tuple

from launcher.backends import dynamic, ranktable, single
from launcher.backends.env import EnvPlan, normalise_target

# A worker's environment is read by the first backend that claims it; single claims everything.
BACKENDS = (ranktable, dynamic, single)


def read_env(env: Mapping[str, str], device_target: Optional[str] = None) -> EnvPlan:
    """Worker side: start-up mode, role, rank, world size and device from the environment (pure)."""
    target = normalise_target(device_target)
    backend = next(b for b in BACKENDS if b.claims(env))
    return backend.read(env, target)


def by_name(name: str):
    return next(b for b in BACKENDS if b.NAME == name)


def all_variables() -> Tuple[str, ...]:
    """Every variable any backend writes: what a worker of another start-up mode must not inherit."""
    names = []
    for backend in BACKENDS:
        names += [v for v in backend.VARIABLES if v not in names]
    return tuple(names)
