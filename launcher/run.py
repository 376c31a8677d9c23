"""`python -m launcher run [options] -- COMMAND ARGS...`: plan the workers of this node and supervise them.

I/O edge of the run subcommand: reads the machine (cards, cores, free port, Slurm/MPI variables, rank
tables), builds the pure plan (launcher.plan) and hands it to launcher.supervisor.
"""
import argparse
import dataclasses
import glob
import os
import random
import shutil
import socket
import sys
from typing import Callable, Dict, List, Optional

import psutil

from launcher import cluster, plan, ranktable, supervisor
from launcher.backends import dynamic
from launcher.backends import ranktable as ranktable_backend
from launcher.errors import PORT, SECONDS, UserError, exit_on_user_error, integer, number, path, text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--nproc", "--nproc-per-node", "--nproc_per_node", type=integer(ge=1), default=None,
                        help="workers on this node (default: the rank table's devices for ascend, 1 for cluster)")
    parser.add_argument("--backend", choices=plan.BACKENDS, default="auto",
                        help="ascend (rank table), cluster (MindSpore dynamic cluster, CPU/GPU) or auto "
                             "(ascend when /dev/davinci* exists)")
    parser.add_argument("--log-dir", default="launcher_logs", type=path("output_dir"),
                        help="worker logs <log-dir>/worker_<rank>.log and working dirs <log-dir>/rank_<rank>")
    parser.add_argument("--no-chdir", dest="chdir", action="store_false",
                        help="run workers in the launcher's directory instead of <log-dir>/rank_<rank>")
    parser.add_argument("--bind-cores", action=argparse.BooleanOptionalAction, default=False,
                        help="split this node's cores evenly and pin workers (default: unpinned; "
                             "scripts/run_distribute.sh pins, --no-bind-cores after it undoes that)")
    parser.add_argument("--tee", nargs="?", const="0", default=None, metavar="RANKS", type=text(nonempty=True),
                        help="copy these ranks' output to the console, prefixed '[rank N]' (default 0; 'all')")
    parser.add_argument("--max-restarts", type=integer(ge=0), default=0,
                        help="restart the whole group after a failure up to K times (logs in attempt_<k>/)")
    parser.add_argument("--grace-period", type=number(ge=0, le=10**9), default=5.0,
                        help="seconds between SIGTERM and SIGKILL when stopping workers")
    parser.add_argument("--preempt-grace", type=number(ge=0, le=10**9), default=120.0, metavar="S",
                        help="after SIGTERM/SIGUSR1 to the launcher, seconds the workers get to save and exit "
                             "before SIGKILL (default 120)")
    parser.add_argument("--timeout", type=SECONDS, default=None, help="stop the job after this many seconds")
    parser.add_argument("--hang-timeout", type=SECONDS, default=None, metavar="S",
                        help="a worker whose heartbeat file (LAUNCHER_HEARTBEAT_FILE) is older than S seconds is "
                             "hung: its stack is collected, the job stopped (exit 124); workers that never "
                             "touch the file are not watched (default: off)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every process's command, directory, environment and cores; start nothing")
    nodes = parser.add_argument_group("multi-node (defaults from Slurm or mpirun when present)")
    nodes.add_argument("--nnodes", type=integer(ge=1), default=None)
    nodes.add_argument("--node-rank", "--node_rank", type=integer(ge=0), default=None)
    nodes.add_argument("--master-addr", "--master_addr", default=None, type=text(nonempty=True),
                       help="scheduler host (cluster backend; default 127.0.0.1)")
    nodes.add_argument("--master-port", "--master_port", type=PORT, default=None,
                       help="scheduler port (cluster backend; default: a free port on one node)")
    nodes.add_argument("--standalone", action="store_true",
                       help="torchrun's single-node spelling: accepted, it is the default here (local "
                            "scheduler on a free port)")
    ascend = parser.add_argument_group("ascend backend")
    ascend.add_argument("--rank-table", default=None, type=path("file"),
                        help="existing (merged) rank table; generated when absent")
    ascend.add_argument("--device-ids", "--device-num", dest="device_ids", default=None, type=text(nonempty=True),
                        help="chips for a generated table: '[0,8)', '0,1,2,3' or '4-7'")
    ascend.add_argument("--visible-devices", default=None, type=text(nonempty=True),
                        help="visible chips (default ASCEND_RT_VISIBLE_DEVICES)")
    ascend.add_argument("--hccn-conf", default=ranktable.hccn.DEFAULT_HCCN_CONF, type=path("maybe_file"),
                        help="device IPs file when hccn_tool is absent")
    ascend.add_argument("--server-ip", default=None, type=text(nonempty=True),
                        help="this server's IP (default: first non-loopback)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")


def has_ascend_cards() -> bool:
    return bool(glob.glob("/dev/davinci[0-9]*"))


def free_port(host: str = "", rng: Optional[random.Random] = None) -> int:
    """A port that is free now, chosen below the kernel's ephemeral range: the scheduler binds it seconds
    later, and ports in that range are handed to every outgoing connection on the machine meanwhile."""
    rng = rng or random.Random()
    low = _ephemeral_low()
    for _ in range(50):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            return max(int(handle.read().split()[0]), 13024)
    except (OSError, ValueError, IndexError):
        return 32768


def parse_tee(text: Optional[str], world: int) -> List[int]:
    """'0,2' -> [0, 2]; 'all' -> every rank; None -> no tee."""
    if text is None:
        return []
    if text.strip() == "all":
        return list(range(world))
    try:
        ranks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--tee {text!r}: expected rank numbers like 0 or 0,3, or 'all'") from None
    bad = [r for r in ranks if not 0 <= r < world]
    if bad:
        raise UserError(f"--tee {text!r}: rank {bad[0]} is not in 0..{world - 1}")
    return ranks


def _command(args) -> tuple:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return tuple(command)


def _check_executable(command: tuple, cwd: str, worker_cwd: Optional[str] = None) -> None:
    """A typo in the command is the user's mistake: say so before any process starts. A relative path
    must also resolve where the workers run (`worker_cwd`, <log-dir>/rank_<r> unless --no-chdir)."""
    if not command:
        return
    program = command[0]
    found = os.access(os.path.join(cwd, program), os.X_OK) if os.sep in program else shutil.which(program)
    if not found:
        raise UserError(f"command {program!r}: not found or not executable")
    if os.sep in program and not os.path.isabs(program) and worker_cwd is not None:
        if not os.access(os.path.normpath(os.path.join(worker_cwd, program)), os.X_OK):
            raise UserError(f"command {program!r}: a relative path, but workers run in {worker_cwd} where it "
                            f"does not resolve; give {os.path.abspath(program)!r} or use --no-chdir")


def _check_numbers(args) -> None:
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: expected at least 1 worker per node")
    for flag, value, low in (("--max-restarts", args.max_restarts, 0), ("--grace-period", args.grace_period, 0),
                             ("--preempt-grace", args.preempt_grace, 0)):
        if value < low:
            raise UserError(f"{flag} {value}: expected a value >= {low}")
    for flag, value in (("--timeout", args.timeout), ("--hang-timeout", args.hang_timeout)):
        if value is not None and not value > 0:
            raise UserError(f"{flag} {value}: expected a positive number of seconds")


def _cluster_specs(base: plan.PlanOptions, attempt_dir: str, port: Optional[int]) -> List[plan.WorkerSpec]:
    opts = dataclasses.replace(base, log_dir=attempt_dir, master_port=port if port is not None else free_port())
    return plan.cluster_plan(opts, sys.executable, os.environ)


def _ascend_inputs(args, log_dir: str, nnodes: int):
    """(rank table path, table, this server's (rank, chip) list, whether the table must be written)."""
    if args.rank_table:
        path = os.path.abspath(args.rank_table)
        table = ranktable.load(path)
        rows = ranktable.workers(table)
        servers = {ip for _, ip, _ in rows}
        if args.server_ip is None and len(servers) == 1:
            server_ip = next(iter(servers))
        else:
            server_ip = args.server_ip or cluster.detect_server_ip()
        local = [(rank, chip) for rank, ip, chip in rows if ip == server_ip]
        if not local:
            raise UserError(f"{path}: no device listed for this server {server_ip} "
                            f"(servers: {', '.join(sorted(servers))}); pass --server-ip")
        return path, table, local, False
    if nnodes > 1:
        raise UserError("--backend ascend with --nnodes > 1 needs --rank-table (a merged cluster table, "
                        "see 'python -m launcher merge')")
    device_ids = args.device_ids
    table = ranktable.generate_local(device_ids, args.visible_devices, args.server_ip, args.hccn_conf)
    rows = ranktable.workers(table)
    if device_ids is None and args.nproc is not None and args.nproc < len(rows):
        table = ranktable.generate_local([chip for _, _, chip in rows[:args.nproc]], args.visible_devices,
                                         args.server_ip, args.hccn_conf)
        rows = ranktable.workers(table)
    path = os.path.abspath(str(ranktable.default_path(table, os.path.join(log_dir, "hccl_configs"))))
    return path, table, [(rank, chip) for rank, _, chip in rows], True


@dataclasses.dataclass
class Job:
    """One backend's plan for this node: world size, the specs of attempt k, and files to write first."""
    world: int
    make_specs: Callable[[int], List[plan.WorkerSpec]]
    files: Dict[str, dict] = dataclasses.field(default_factory=dict)   # rank tables to write: path -> table


def _cluster_job(args, base: plan.PlanOptions, log_dir: str) -> Job:
    """Dynamic cluster: a free (or the given, or the Slurm-derived) scheduler port, fresh every attempt."""
    nnodes = base.nnodes
    port = args.master_port
    if port is None and nnodes > 1:
        job = os.environ.get("SLURM_JOB_ID", "")
        if not job.isdigit():
            raise UserError(f"--nnodes {nnodes}: pass --master-port (the same on every node)")
        port = 20000 + int(job) % 20000  # every node of a Slurm job derives the same port
    if nnodes > 1 and args.master_addr is None and cluster.node_info(os.environ).master_addr is None:
        raise UserError(f"--nnodes {nnodes}: pass --master-addr (node 0's address, the same on every node)")

    def make_specs(attempt: int) -> List[plan.WorkerSpec]:
        return _cluster_specs(base, plan.attempt_log_dir(log_dir, attempt, args.max_restarts), port)
    return Job(nnodes * base.nproc, make_specs)


def _ascend_job(args, base: plan.PlanOptions, log_dir: str) -> Job:
    """HCCL rank table: the given table, or one generated for this server's chips."""
    table_path, table, local, generated = _ascend_inputs(args, log_dir, base.nnodes)
    rank_size = len(ranktable.workers(table))
    visible_env = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    visible_chips = ranktable.parse_devices(visible_env, "ASCEND_RT_VISIBLE_DEVICES") if visible_env else None
    base = dataclasses.replace(base, nproc=args.nproc or len(local))

    def make_specs(attempt: int) -> List[plan.WorkerSpec]:
        opts = dataclasses.replace(base, log_dir=plan.attempt_log_dir(log_dir, attempt, args.max_restarts))
        return plan.ascend_plan(opts, table_path, rank_size, local, visible_chips)
    return Job(rank_size, make_specs, {table_path: table} if generated else {})


# `--backend` value -> how this node's job is planned (the environment itself comes from launcher.backends).
_JOBS = {dynamic.NAME: _cluster_job, ranktable_backend.NAME: _ascend_job}


@exit_on_user_error
def main(args) -> int:
    command = _command(args)
    _check_numbers(args)
    log_dir = os.path.abspath(args.log_dir)
    _check_executable(command, os.getcwd(), plan.worker_dir(log_dir, 0) if args.chdir else None)
    node = cluster.node_info(os.environ)
    if args.standalone:
        if (args.nnodes or 1) > 1:
            raise UserError(f"--standalone with --nnodes {args.nnodes}: standalone means one node")
        print("launcher: --standalone has no effect here (one node with a local scheduler on a free port is "
              "the default)", file=sys.stderr)
    nnodes = args.nnodes if args.nnodes is not None else node.nnodes
    node_rank = args.node_rank if args.node_rank is not None else node.node_rank
    backend = plan.choose_backend(args.backend, has_ascend_cards())
    cores = tuple(sorted(psutil.Process().cpu_affinity()))
    base = plan.PlanOptions(
        command=command, nproc=args.nproc or 1, log_dir=log_dir, run_dir=log_dir, launch_dir=os.getcwd(),
        nnodes=nnodes, node_rank=node_rank, master_addr=args.master_addr or node.master_addr or "127.0.0.1",
        bind_cores=args.bind_cores, chdir=args.chdir, available_cores=cores)

    job = _JOBS[backend](args, base, log_dir)
    world, make_specs = job.world, job.make_specs
    tee_ranks = parse_tee(args.tee, world)
    specs = make_specs(0)
    if args.dry_run:
        print(f"# backend {backend}, node {node_rank} of {nnodes}, {len(specs)} processes, logs in {log_dir}")
        for path in job.files:
            print(f"# rank table would be written to {path}")
        for spec in specs:
            print(plan.describe(spec))
        return 0
    for path, table in job.files.items():
        ranktable.write_atomic(table, path)
    print(f"launcher: {sum(s.role == 'worker' for s in specs)} workers on node {node_rank} of {nnodes} "
          f"(backend {backend}), logs in {log_dir}", file=sys.stderr, flush=True)
    return supervisor.run_attempts(make_specs, max_restarts=args.max_restarts, grace=args.grace_period,
                                   timeout=args.timeout, tee_ranks=tee_ranks, hang_timeout=args.hang_timeout,
                                   preempt_grace=args.preempt_grace)
