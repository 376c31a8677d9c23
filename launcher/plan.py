"""The launch plan: one `WorkerSpec` per process this node starts. Pure: no processes, no files.

The plan is the seam between the launcher and the workers: `--dry-run` prints it, the supervisor
starts it. Only the variables the launcher sets are in `WorkerSpec.env`, and they come from the start-up
mode's module in launcher.backends (which also reads them back in the worker); the supervisor lays them
over the launcher's own environment when it starts a process.
"""
import os
import shlex
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from launcher.backends import dynamic, ranktable
from launcher.errors import UserError

# What `launcher run --backend` offers: the start-up modes the launcher plans, plus `auto`.
BACKENDS = ("auto", ranktable.NAME, dynamic.NAME)


@dataclass(frozen=True)
class WorkerSpec:
    """One process to start: who it is, what it runs, where, with which variables and cores."""
    role: str                      # "worker", or the name of a service process such as "scheduler"
    rank: int                      # global rank; -1 for the scheduler
    argv: Tuple[str, ...]
    cwd: str
    env: Dict[str, str]            # launcher-set variables only
    cores: Optional[Tuple[int, ...]]
    log_path: str
    env_log: Optional[str] = None  # where the worker's full environment is recorded
    awaited: bool = False          # a service the job waits for after the workers (multi-node scheduler)

    @property
    def name(self) -> str:
        return f"rank {self.rank}" if self.role == "worker" else self.role


@dataclass(frozen=True)
class PlanOptions:
    """What the user asked for, already resolved (backend chosen, port picked, paths absolute)."""
    command: Tuple[str, ...]
    nproc: int
    log_dir: str                   # this attempt's logs
    run_dir: str                   # holds the per-rank working directories, stable across attempts
    launch_dir: str                # the launcher's own working directory
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    bind_cores: bool = False
    chdir: bool = True
    available_cores: Tuple[int, ...] = field(default_factory=tuple)


def choose_backend(requested: str, has_ascend_cards: bool) -> str:
    """`auto` means Ascend rank tables when this server has NPUs, else a MindSpore dynamic cluster."""
    if requested not in BACKENDS:
        raise UserError(f"--backend {requested!r}: expected one of {', '.join(BACKENDS)}")
    if requested == "auto":
        return "ascend" if has_ascend_cards else "cluster"
    return requested


def split_cores(available: Sequence[int], nworkers: int) -> List[Tuple[int, ...]]:
    """Even contiguous blocks of cores per worker (leftovers unused); with fewer cores than workers,
    workers share cores round-robin so that each is still pinned to one."""
    cores = sorted(available)
    if nworkers <= 0 or not cores:
        return [tuple() for _ in range(max(nworkers, 0))]
    if nworkers > len(cores):
        return [(cores[i % len(cores)],) for i in range(nworkers)]
    per = len(cores) // nworkers
    return [tuple(cores[i * per:(i + 1) * per]) for i in range(nworkers)]


def worker_dir(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, f"rank_{rank}")


def worker_log(log_dir: str, rank: int) -> str:
    return os.path.join(log_dir, f"worker_{rank}.log")


def attempt_log_dir(log_dir: str, attempt: int, max_restarts: int) -> str:
    """Without restarts the logs sit directly in log_dir; with restarts every attempt has its own."""
    return log_dir if max_restarts == 0 else os.path.join(log_dir, f"attempt_{attempt}")


def _validate(opts: PlanOptions) -> None:
    if not opts.command:
        raise UserError("no command to run: expected `launcher run [options] -- COMMAND ARGS...`")
    if opts.nproc < 1:
        raise UserError(f"--nproc {opts.nproc}: expected at least 1 worker per node")
    if opts.nnodes < 1:
        raise UserError(f"--nnodes {opts.nnodes}: expected at least 1")
    if not 0 <= opts.node_rank < opts.nnodes:
        raise UserError(f"--node-rank {opts.node_rank}: expected 0..{opts.nnodes - 1} for --nnodes {opts.nnodes}")


def _worker_specs(opts: PlanOptions, ranks_and_env: Sequence[Tuple[int, Dict[str, str]]]) -> List[WorkerSpec]:
    blocks = split_cores(opts.available_cores, len(ranks_and_env)) if opts.bind_cores else None
    specs = []
    for local, (rank, env) in enumerate(ranks_and_env):
        specs.append(WorkerSpec(
            role="worker", rank=rank, argv=tuple(opts.command),
            cwd=worker_dir(opts.run_dir, rank) if opts.chdir else opts.launch_dir,
            env=env, cores=blocks[local] if blocks else None,
            log_path=worker_log(opts.log_dir, rank),
            env_log=os.path.join(worker_dir(opts.run_dir, rank), "env.log")))
    return specs


def cluster_plan(opts: PlanOptions, python: str,
                 environ: Mapping[str, str] = MappingProxyType({})) -> List[WorkerSpec]:
    """Dynamic cluster: ranks node_rank*nproc .. +nproc-1 here, the scheduler on node 0 only. `environ` is
    what the processes inherit (a formation default it sets is left alone)."""
    _validate(opts)
    if not 0 < opts.master_port < 65536:
        raise UserError(f"--master-port {opts.master_port}: expected a port number 1..65535")
    world = opts.nnodes * opts.nproc
    host, port = opts.master_addr, opts.master_port
    ranks = [opts.node_rank * opts.nproc + local for local in range(opts.nproc)]
    tuned = dynamic.formation_env(environ)
    workers = _worker_specs(opts, [(r, {**tuned, **dynamic.worker_env(host, port, world, r)}) for r in ranks])
    if opts.node_rank != 0:
        return workers
    # with several nodes the scheduler serves the others too: the job ends when it exits
    scheduler = WorkerSpec(role="scheduler", rank=-1, argv=(python, "-c", dynamic.SCHEDULER_CODE),
                           cwd=opts.log_dir, env={**tuned, **dynamic.scheduler_env(host, port, world)}, cores=None,
                           log_path=os.path.join(opts.log_dir, "scheduler.log"), awaited=opts.nnodes > 1)
    return [scheduler] + workers


def ascend_plan(opts: PlanOptions, rank_table_file: str, rank_size: int,
                local_devices: Sequence[Tuple[int, int]],
                visible_chips: Optional[Sequence[int]] = None) -> List[WorkerSpec]:
    """Rank table start-up: one worker per (global rank, physical chip) of this server's table entry.

    The table names physical chips, but a worker that inherits ASCEND_RT_VISIBLE_DEVICES sees only the
    visible chips, renumbered from 0: its DEVICE_ID is then the chip's position in that list."""
    _validate(opts)
    if visible_chips is not None:
        missing = [chip for _, chip in local_devices if chip not in visible_chips]
        if missing:
            raise UserError(f"chip {missing[0]} is in the rank table but not in ASCEND_RT_VISIBLE_DEVICES "
                            f"({','.join(map(str, visible_chips))})")
        local_devices = [(rank, list(visible_chips).index(chip)) for rank, chip in local_devices]
    if not os.path.isabs(rank_table_file):
        raise UserError(f"rank table {rank_table_file!r}: expected an absolute path")
    if len(local_devices) != opts.nproc:
        raise UserError(f"--nproc {opts.nproc}: the rank table lists {len(local_devices)} devices "
                        f"for this server ({rank_table_file})")
    return _worker_specs(opts, [(rank, ranktable.worker_env(rank_table_file, rank_size, rank, device))
                                for rank, device in local_devices])


def describe(spec: WorkerSpec) -> str:
    """The dry-run view of one process: command, directory, launcher-set environment, cores, log."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(spec.env.items()))
    cores = ",".join(map(str, spec.cores)) if spec.cores else "all"
    return (f"[{spec.name}]\n"
            f"  command: {shlex.join(spec.argv)}\n"
            f"  cwd:     {spec.cwd}\n"
            f"  env:     {env}\n"
            f"  cores:   {cores}\n"
            f"  log:     {spec.log_path}")
