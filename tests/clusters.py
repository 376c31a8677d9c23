"""Hand-started MindSpore dynamic clusters for tests that run workers without the launcher.

A scheduler and W workers, each in its own session, with exactly the variables the launcher would
give them (common.backends.dynamic); logs in `<cwd>/scheduler.log` and `<cwd>/worker_<r>.log`.
"""
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, Mapping, Sequence, Tuple

from launcher import backends
from launcher.backends import dynamic
from launcher.run import free_port

# Besides the start-up variables: MindSpore's own knobs and the variables cluster detection reads.
_FOREIGN_PREFIXES = ("MS_", "ASCEND_", "OMPI_", "PMI", "SLURM_")


def clean_environ() -> Dict[str, str]:
    """The environment a fresh worker would see: no launcher or cluster variables leaking in."""
    start_up = set(backends.all_variables())
    return {k: v for k, v in os.environ.items() if k not in start_up and not k.startswith(_FOREIGN_PREFIXES)}


def run_cluster(argv: Sequence[str], world_size: int, cwd: Path, base_env: Mapping[str, str],
                timeout: float) -> Tuple[Dict[str, int], Dict[str, str]]:
    """Run `argv` as scheduler and as every worker until all exit; (exit codes, log texts) by process name.

    Whatever is still running at the deadline is killed with its whole session."""
    port = free_port()
    envs = {"scheduler": dynamic.scheduler_env("127.0.0.1", port, world_size)}
    envs.update({f"worker_{r}": dynamic.worker_env("127.0.0.1", port, world_size, r) for r in range(world_size)})
    procs: Dict[str, subprocess.Popen] = {}
    try:
        for name, env in envs.items():
            with open(cwd / f"{name}.log", "w") as log:
                procs[name] = subprocess.Popen(list(argv), cwd=cwd, env={**base_env, **env}, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        codes = {name: p.wait(timeout=max(1.0, deadline - time.monotonic())) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return codes, {name: (cwd / f"{name}.log").read_text(errors="replace") for name in procs}


def parse_dry_run(stdout):
    """`launcher run --dry-run`'s text as {name: {"command":..., "cwd":..., "env": {...}, "cores":..., "log":...}}."""
    blocks, current = {}, None
    for line in stdout.splitlines():
        if line.startswith("["):
            current = blocks.setdefault(line.strip("[]"), {})
        elif current is not None and line.startswith("  "):
            key, _, value = line.strip().partition(":")
            value = value.strip()
            current[key] = dict(item.split("=", 1) for item in value.split()) if key == "env" else value
    return blocks
