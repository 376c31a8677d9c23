"""What a worker reads back from its environment, whichever start-up mode wrote it (pure, no MindSpore)."""
from dataclasses import dataclass
from typing import Mapping, Optional

from launcher.errors import UserError

DEVICE_TARGETS = ("Ascend", "GPU", "CPU")


@dataclass(frozen=True)
class EnvPlan:
    """What the environment asks for, decided before any MindSpore call.

    ``startup`` is "ranktable", "dynamic" or "single"; ``device_target`` is None when the caller left
    the choice to MindSpore's current context (single card only).
    """
    startup: str
    role: str
    device_target: Optional[str]
    backend: str
    device_id: Optional[int]
    rank: int
    world_size: int
    rank_table: Optional[str] = None


def int_var(env: Mapping[str, str], key: str, minimum: int, default: Optional[int] = None) -> int:
    raw = env.get(key, "")
    if raw == "":
        if default is None:
            raise UserError(f"environment variable {key} is not set; expected an integer >= {minimum}")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"environment variable {key}={raw!r}: expected an integer >= {minimum}") from None
    if value < minimum:
        raise UserError(f"environment variable {key}={raw!r}: expected an integer >= {minimum}")
    return value


def rank_var(env: Mapping[str, str], key: str, world_size: int, size_key: str) -> int:
    rank = int_var(env, key, 0, default=0)
    if rank >= world_size:
        raise UserError(f"environment variable {key}={rank} is out of range: "
                        f"expected 0 <= {key} < {size_key}={world_size}")
    return rank


def normalise_target(device_target: Optional[str]) -> Optional[str]:
    if device_target is None:
        return None
    for name in DEVICE_TARGETS:
        if device_target.lower() == name.lower():
            return name
    raise UserError(f"device_target={device_target!r}: expected one of {', '.join(DEVICE_TARGETS)}")
