"""Single-card start-up: no communication. Both sides of the (empty) contract.

Nothing is written but an optional chip; the worker must not inherit any other start-up mode's
variables (scripts/run_standalone.sh clears them), and a RANK_SIZE above 1 without them is a mistake.
"""
from typing import Dict, Mapping, Optional

from launcher.backends.env import EnvPlan, int_var
from launcher.errors import UserError

NAME = "single"
STARTUP = "single"
RANK_SIZE, DEVICE_ID = "RANK_SIZE", "DEVICE_ID"
VARIABLES = (DEVICE_ID,)


def worker_env(device_id: Optional[int] = None) -> Dict[str, str]:
    """Launcher side: at most the chip to open."""
    return {} if device_id is None else {DEVICE_ID: str(device_id)}


def claims(env: Mapping[str, str]) -> bool:
    return True


def read(env: Mapping[str, str], target: Optional[str]) -> EnvPlan:
    size = int_var(env, RANK_SIZE, 1, default=1)
    if size > 1:
        raise UserError(f"environment variable {RANK_SIZE}={size} asks for {size} cards but neither "
                        f"RANK_TABLE_FILE (Ascend) nor MS_ROLE (dynamic cluster) is set")
    device_id = int_var(env, DEVICE_ID, 0) if env.get(DEVICE_ID) else None
    return EnvPlan(STARTUP, "worker", target, "none", device_id, 0, 1)
