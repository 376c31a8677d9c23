"""`python -m launcher msrun [msrun options] SCRIPT ARGS...`: MindSpore's msrun command line, run by this
launcher. Every msrun option is accepted with msrun's meaning; one that has no effect here says so in one
line. The translation is pure (`translate`), the run is `launcher run`'s."""
import argparse
import os
import sys
from typing import List, Tuple

from launcher.errors import PORT, ArgumentParser, UserError, boolean, integer, text


_bool = boolean("True", "False")  # msrun's spelling


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """msrun's options, names and defaults as in MindSpore 2.10's `msrun --help`."""
    parser.add_argument("--worker_num", type=integer(ge=1), default=8, help="workers in the whole job (default 8)")
    parser.add_argument("--local_worker_num", type=integer(ge=1), default=8, help="workers on this node (default 8)")
    parser.add_argument("--master_addr", default="127.0.0.1", type=text(nonempty=True), help="scheduler address")
    parser.add_argument("--master_port", type=PORT, default=8118, help="scheduler port (default 8118)")
    parser.add_argument("--node_rank", type=integer(ge=-1), default=-1, help="this node's rank (-1: single node)")
    parser.add_argument("--log_dir", default="", type=text(), help="worker logs (default: the current directory)")
    parser.add_argument("--join", type=_bool, default=False, help="accepted; this launcher always waits")
    parser.add_argument("--cluster_time_out", type=integer(ge=0), default=600,
                        help="cluster-building time-out in seconds (MS_TOPO_TIMEOUT of every process)")
    parser.add_argument("--bind_core", type=_bool, default=False, help="pin workers to even blocks of cores")
    parser.add_argument("--bind_numa", type=_bool, default=False, help="accepted, no effect here")
    parser.add_argument("--sim_level", type=integer(ge=-1), default=-1,
                        help="accepted, no effect here (no dry-run simulation)")
    parser.add_argument("--sim_rank_id", type=integer(ge=-1), default=-1, help="accepted, no effect here")
    parser.add_argument("--rank_table_file", default="", type=text(),
                        help="msrun uses it for side features only, not for start-up: no effect here")
    parser.add_argument("--worker_log_name", default="", type=text(),
                        help="accepted; logs are always worker_<rank>.log")
    parser.add_argument("--tail_worker_log", default="-1", type=text(nonempty=True),
                        help="workers whose log goes to the console (-1: all, else e.g. 0 or 0,1)")
    parser.add_argument("task_script", type=text(nonempty=True),
                        help="the script every worker runs (a .py file runs under this Python)")
    parser.add_argument("task_script_args", nargs=argparse.REMAINDER, help="its arguments")


def translate(args, python: str = sys.executable) -> Tuple[List[str], List[str], dict]:
    """(`launcher run` arguments, one-line notes about options without effect, environment to set)."""
    if args.local_worker_num < 1 or args.worker_num < args.local_worker_num:
        raise UserError(f"--local_worker_num {args.local_worker_num} --worker_num {args.worker_num}: expected "
                        f"1 <= local_worker_num <= worker_num")
    if args.worker_num % args.local_worker_num:
        raise UserError(f"--worker_num {args.worker_num} is not a multiple of --local_worker_num "
                        f"{args.local_worker_num}: every node runs the same number of workers here")
    nnodes = args.worker_num // args.local_worker_num
    node_rank = max(args.node_rank, 0)
    if nnodes > 1 and args.node_rank < 0:
        raise UserError(f"--worker_num {args.worker_num} over {nnodes} nodes needs --node_rank (0..{nnodes - 1})")
    notes = []
    if not args.join:
        notes.append("--join False has no effect: this launcher always waits for the job and returns its result")
    for flag, value, default in (("--bind_numa", args.bind_numa, False), ("--sim_level", args.sim_level, -1),
                                 ("--sim_rank_id", args.sim_rank_id, -1), ("--rank_table_file", args.rank_table_file, ""),
                                 ("--worker_log_name", args.worker_log_name, "")):
        if value != default:
            notes.append(f"{flag} {value} has no effect here")
    tee = "all" if args.tail_worker_log.strip() == "-1" else args.tail_worker_log
    command = ([python, args.task_script] if args.task_script.endswith(".py") else [args.task_script])
    run = ["--backend", "cluster", "--nproc", str(args.local_worker_num), "--nnodes", str(nnodes),
           "--node-rank", str(node_rank), "--master-addr", args.master_addr, "--master-port", str(args.master_port),
           "--log-dir", args.log_dir or ".", "--no-chdir", "--tee", tee]
    run += ["--bind-cores"] if args.bind_core else []
    return run + ["--", *command, *args.task_script_args], notes, {"MS_TOPO_TIMEOUT": str(args.cluster_time_out)}


def main(args) -> int:
    from launcher import run

    run_args, notes, env = translate(args)
    for note in notes:
        print(f"launcher msrun: {note}", file=sys.stderr)
    os.environ.update(env)
    parser = ArgumentParser(prog="python -m launcher msrun (as launcher run)")
    run.add_arguments(parser)
    return run.main(parser.parse_args(run_args))
