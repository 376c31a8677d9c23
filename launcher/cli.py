"""`python -m launcher {ranktable,merge,validate,run,doctor}` (console scripts clip-launch, clip-ranktable)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launcher import hccn, ranktable
from launcher.errors import ArgumentParser, UserError, exit_on_user_error, integer, path, text


def _order(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"--order {text!r}: expected comma-separated server IPs")
    return items


def _write(table: dict, output: str | None, out_dir: str) -> Path:
    path = Path(output) if output else ranktable.default_path(table, out_dir)
    try:
        return ranktable.write_atomic(table, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write rank table ({exc.strerror or exc})") from None


def _summary(table: dict) -> str:
    return f"{table['server_count']} server(s), {len(ranktable.workers(table))} ranks"


def _local_table(args, rank: int | None = None) -> dict:
    """This server's table from the ranktable options; under --mpi "{rank}" in them is expanded."""
    from launcher.mpi import expand

    def value(text):
        return text if rank is None else expand(text, rank)

    return ranktable.generate_local(
        device_ids=value(args.device_num), visible_devices=value(args.visible_devices),
        server_ip=value(args.server_ip), hccn_conf=value(args.hccn_conf) or hccn.DEFAULT_HCCN_CONF,
        server_cards=args.server_cards, ip_source="file" if args.hccn_conf else "auto")


def cmd_ranktable(args) -> int:
    if args.order is not None and not args.mpi:
        raise UserError("--order only applies with --mpi (use 'merge --order' for existing tables)")
    if args.mpi:
        from launcher import mpi

        rank, size, table = mpi.allgather_table(lambda r: _local_table(args, r), _order(args.order))
        path = _write(table, mpi.expand(args.output, rank), mpi.expand(args.out_dir, rank))
        print(f"mpi rank {rank}/{size}: wrote {path} ({_summary(table)})", flush=True)
        return 0
    table = _local_table(args)
    path = _write(table, args.output, args.out_dir)
    print(f"wrote {path} ({_summary(table)})")
    return 0


def cmd_merge(args) -> int:
    tables = [ranktable.load(path) for path in args.tables]
    table = ranktable.merge(tables, order=_order(args.order), names=args.tables)
    path = _write(table, args.output, args.out_dir)
    print(f"wrote {path} ({_summary(table)})")
    return 0


def cmd_validate(args) -> int:
    """Every problem of every file on its own line; exit 1 when any table is invalid."""
    invalid = 0
    for path in args.tables:
        table = ranktable.read_json(path)
        problems = ranktable.validate(table)
        invalid += bool(problems)
        for problem in problems:
            print(f"{path}: {problem}")
        if not problems:
            print(f"{path}: valid ({_summary(table)})")
    return 1 if invalid else 0


def add_ranktable_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device-num", "--devices", "--device_num", dest="device_num", metavar="SPEC",
                        type=text(nonempty=True),
                        help='chips of this server: "[0,8)", "[0,4)", "0,1,2,3" or "4-7" (default: all visible)')
    parser.add_argument("--visible-devices", "--visible_devices", dest="visible_devices", metavar="LIST",
                        type=text(nonempty=True),
                        help="chips that may be used, e.g. 0,1,2,3 (default: $ASCEND_RT_VISIBLE_DEVICES, else all)")
    parser.add_argument("--server-ip", "--server_ip", dest="server_ip", metavar="IP", type=text(nonempty=True),
                        help="this server's IP (default: first non-loopback IPv4)")
    parser.add_argument("--hccn-conf", metavar="PATH", type=path("maybe_file"),
                        help=f"read device IPs from this file (default: hccn_tool when on PATH, "
                             f"else {hccn.DEFAULT_HCCN_CONF})")
    parser.add_argument("--server-cards", type=integer(ge=1), choices=ranktable.SERVER_CARDS, default=8,
                        help="cards per server: 8 (two 4-chip groups) or 16")
    parser.add_argument("--output", "-o", metavar="PATH", type=path("output_file"),
                        help="output file (default: OUT_DIR/hccl_<n>p_<ids>_<ip>.json)")
    parser.add_argument("--out-dir", default="hccl_configs", type=path("output_dir"),
                        help="directory for the default file name")
    parser.add_argument("--mpi", action="store_true",
                        help='run once per server under mpirun; all servers write the same merged table; '
                             '"{rank}" in option values becomes the MPI rank')
    parser.add_argument("--order", metavar="IPS", type=text(nonempty=True),
                        help="with --mpi: server IPs in rank order (default: by IP)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; the `run` options come from launcher.run, imported only when `run` is the command."""
    parser = ArgumentParser(prog="python -m launcher",
                                     description="Data-parallel launcher for MindSpore clusters.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ranktable", help="write this server's (or with --mpi the cluster's) HCCL rank table")
    add_ranktable_arguments(p)
    p.set_defaults(handler=cmd_ranktable)

    p = sub.add_parser("merge", help="merge server rank tables into one cluster table")
    p.add_argument("tables", nargs="+", metavar="FILE", type=path("maybe_file"))
    p.add_argument("--order", metavar="IPS", type=text(nonempty=True),
                   help="server IPs in rank order (default: by server IP, numerically)")
    p.add_argument("--output", "-o", metavar="PATH", type=path("output_file"),
                   help="output file (default: OUT_DIR/hccl_<n>p_<ids>_<ip>.json)")
    p.add_argument("--out-dir", default="hccl_configs", type=path("output_dir"),
                   help="directory for the default file name")
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser("validate", help="check rank tables and print every problem")
    p.add_argument("tables", nargs="+", metavar="FILE", type=path("maybe_file"))
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("run", help="start and supervise workers (run --help for options)")
    if command == "run":
        from launcher import run as run_cmd

        run_cmd.add_arguments(p)
        p.set_defaults(handler=run_cmd.main)

    p = sub.add_parser("msrun", help="msrun's command line (--worker_num ... SCRIPT ARGS), run by this launcher")
    if command == "msrun":
        from launcher import msrun

        msrun.add_arguments(p)
        p.set_defaults(handler=msrun.main)

    p = sub.add_parser("doctor", help="preflight checks, one PASS/FAIL line each")
    from launcher import doctor

    doctor.add_arguments(p)
    p.set_defaults(handler=doctor.main)
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return args.handler(args)


def ranktable_main(argv: list[str] | None = None) -> int:
    """`clip-ranktable ...` is `python -m launcher ranktable ...`."""
    return main(["ranktable", *(sys.argv[1:] if argv is None else argv)])
