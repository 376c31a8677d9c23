"""HCCL rank-table start-up (Ascend): both sides of the contract.

The launcher gives rank r of W the merged rank table's path, W, r and the chip to open; the worker
reads them back and hands the table to HCCL. Only the launcher reads the table itself.
"""
from typing import Dict, Mapping, Optional

from launcher.backends.env import EnvPlan, int_var, rank_var
from launcher.errors import UserError

NAME = "ascend"                     # `launcher run --backend` value
STARTUP = "ranktable"               # EnvPlan.startup of its workers
RANK_TABLE_FILE, RANK_SIZE, RANK_ID, DEVICE_ID = "RANK_TABLE_FILE", "RANK_SIZE", "RANK_ID", "DEVICE_ID"
VARIABLES = (RANK_TABLE_FILE, RANK_SIZE, RANK_ID, DEVICE_ID)


def worker_env(rank_table_file: str, rank_size: int, rank: int, device_id: int) -> Dict[str, str]:
    """Launcher side: the variables of global rank `rank` of `rank_size`, on chip `device_id` as it sees it."""
    return {RANK_TABLE_FILE: rank_table_file, RANK_SIZE: str(rank_size), RANK_ID: str(rank),
            DEVICE_ID: str(device_id)}


def claims(env: Mapping[str, str]) -> bool:
    return bool(env.get(RANK_TABLE_FILE))


def read(env: Mapping[str, str], target: Optional[str]) -> EnvPlan:
    """Worker side: rank, world size and chip from the variables `worker_env` wrote."""
    if target not in (None, "Ascend"):
        raise UserError(f"{RANK_TABLE_FILE} is set (HCCL rank table, Ascend only) but "
                        f"device_target={target!r}; unset {RANK_TABLE_FILE} or use Ascend")
    size = int_var(env, RANK_SIZE, 1)
    return EnvPlan(STARTUP, "worker", "Ascend", "hccl", int_var(env, DEVICE_ID, 0, default=0),
                   rank_var(env, RANK_ID, size, RANK_SIZE), size, env[RANK_TABLE_FILE])
