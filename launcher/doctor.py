"""Preflight checks before a launch: one PASS/FAIL/SKIP line each, non-zero exit when any FAIL.

Each check is a pure function over measured facts returning a `Check`; the measuring (subprocess,
sockets, psutil, files) happens in `run_checks`. MindSpore is probed in a child process because the
launcher itself never imports it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from launcher import hccn, ranktable
from launcher.errors import PORT, UserError, integer, number, path, text

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

_PROBE = """
import json
import mindspore as ms
import mindspore.hal as hal
found = {}
for target in ("Ascend", "GPU", "CPU"):
    try:
        ok = bool(hal.is_available(target))
    except Exception:
        ok = False
    if ok:
        try:
            found[target] = 1 if target == "CPU" else int(hal.device_count(target))
        except Exception:
            found[target] = 0
print(json.dumps({"version": ms.__version__, "default_target": ms.get_context("device_target"), "devices": found}))
"""


@dataclass(frozen=True)
class Check:
    """One preflight result: status PASS/FAIL/SKIP, what was checked, and the evidence."""

    status: str
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status}  {self.name}: {self.detail}"


def mindspore_check(returncode: int, stdout: str, stderr: str) -> Check:
    """Judge the probe's output: importable, version, default target and available device kinds."""
    if returncode != 0:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        return Check(FAIL, "mindspore", f"import failed (exit {returncode}): {lines[-1] if lines else 'no output'}")
    try:
        info = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Check(FAIL, "mindspore", f"unexpected probe output {stdout.strip()[:80]!r}")
    devices = ", ".join(f"{kind} x{count}" if kind != "CPU" else kind for kind, count in info["devices"].items())
    return Check(PASS, "mindspore", f"{info['version']} importable, device target {info['default_target']}, "
                                    f"available: {devices or 'none'}")


def probe_mindspore(python: str, timeout: float = 180.0) -> Check:
    """Import MindSpore in a child interpreter and report what it sees."""
    env = dict(os.environ, GLOG_v="3", PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        return Check(FAIL, "mindspore", f"python interpreter {python!r} not found")
    except subprocess.TimeoutExpired:
        return Check(FAIL, "mindspore", f"import did not finish within {timeout:.0f} s")
    return mindspore_check(proc.returncode, proc.stdout, proc.stderr)


def hccn_check(path: str, asked: bool) -> Check:
    """hccn.conf readable, well-formed and free of duplicate IPs; skipped on hosts without one unless asked."""
    if not asked and not Path(path).exists():
        return Check(SKIP, "hccn.conf", f"{path} not present (no Ascend cards configured on this host)")
    try:
        chips = hccn.read_hccn_conf(path)
    except UserError as exc:
        return Check(FAIL, "hccn.conf", str(exc))
    listed = ",".join(map(str, sorted(chips)))
    return Check(PASS, "hccn.conf", f"{path}: {len(chips)} device IPs (chips {listed}), no duplicates")


def ranktable_check(path: str | None) -> Check:
    if path is None:
        return Check(SKIP, "rank table", "none given (--rank-table FILE)")
    try:
        table = ranktable.load(path)
    except UserError as exc:
        return Check(FAIL, "rank table", str(exc))
    return Check(PASS, "rank table", f"{path}: valid, {table['server_count']} servers, "
                                     f"{len(ranktable.workers(table))} ranks")


def consistency_check(table: dict, chips: dict[int, str], local_ips: list[str]) -> Check:
    """The rank table's entries for this server must carry the device IPs hccn.conf gives for those chips."""
    name = "rank table vs hccn.conf"
    mine = [s for s in table["server_list"] if s["server_id"] in local_ips]
    if not mine:
        servers = ", ".join(s["server_id"] for s in table["server_list"])
        return Check(SKIP, name, f"no server of the table ({servers}) is this host ({', '.join(local_ips)})")
    server = mine[0]
    for dev in server["device"]:
        expected = chips.get(int(dev["device_id"]))
        if expected != dev["device_ip"]:
            found = f"address_{dev['device_id']}={expected}" if expected else f"no address_{dev['device_id']}"
            return Check(FAIL, name, f"server {server['server_id']} device {dev['device_id']} has device_ip "
                                     f"{dev['device_ip']} but hccn.conf has {found}")
    return Check(PASS, name, f"server {server['server_id']}: {len(server['device'])} device IPs match")


def port_check(port: int | None, free: bool, detail: str = "") -> Check:
    if port is None:
        return Check(PASS if free else FAIL, "ports", "the OS hands out free ports" if free
                     else f"cannot bind any port: {detail}")
    return Check(PASS if free else FAIL, f"port {port}", "free" if free else f"in use or not bindable: {detail}")


def resources_check(nproc: int, cores: int, available_bytes: int, min_mem_gb: float) -> Check:
    """Enough cores for one per worker and enough free memory for min_mem_gb per worker."""
    per_worker_gb = available_bytes / nproc / 2**30
    text = (f"{nproc} workers: {cores} cores ({cores / nproc:.2f} per worker), "
            f"{available_bytes / 2**30:.1f} GiB available ({per_worker_gb:.1f} GiB per worker)")
    if cores < nproc:
        return Check(FAIL, "resources", f"{text}; fewer cores than workers (oversubscribed)")
    if per_worker_gb < min_mem_gb:
        return Check(FAIL, "resources", f"{text}; below --min-mem-gb {min_mem_gb:g}")
    return Check(PASS, "resources", text)


def try_bind(port: int) -> tuple[bool, str]:
    """Whether a TCP port can be bound on all interfaces right now (0: any free port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            return False, exc.strerror or str(exc)
    return True, ""


def usable_cores() -> int:
    import psutil

    process = psutil.Process()
    if hasattr(process, "cpu_affinity"):  # Linux and Windows; psutil has no affinity on macOS
        return len(process.cpu_affinity())
    return psutil.cpu_count() or 1


def run_checks(nproc: int = 1, hccn_conf: str | None = None, rank_table: str | None = None,
               ports: list[int] | None = None, python: str = sys.executable, min_mem_gb: float = 1.0,
               server_ip: str | None = None) -> list[Check]:
    """Measure and judge everything; prints nothing."""
    import psutil

    from launcher import cluster

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: expected a positive number of workers")
    for port in ports or []:
        if not 1 <= port <= 65535:
            raise UserError(f"--port {port}: expected 1-65535")
    conf = hccn_conf or hccn.DEFAULT_HCCN_CONF
    checks = [probe_mindspore(python), hccn_check(conf, asked=hccn_conf is not None), ranktable_check(rank_table)]
    if checks[1].status == PASS and checks[2].status == PASS:
        local_ips = [server_ip] if server_ip else cluster.server_ip_candidates(*cluster.interfaces())
        checks.append(consistency_check(ranktable.load(rank_table), hccn.read_hccn_conf(conf), local_ips))
    if ports:
        checks.extend(port_check(port, *try_bind(port)) for port in ports)
    else:
        checks.append(port_check(None, *try_bind(0)))
    checks.append(resources_check(nproc, usable_cores(), psutil.virtual_memory().available, min_mem_gb))
    return checks


def main(args) -> int:
    """`python -m launcher doctor`: print one line per check; exit 1 when any check failed."""
    checks = run_checks(nproc=args.nproc, hccn_conf=args.hccn_conf, rank_table=args.rank_table,
                        ports=args.port, python=args.python, min_mem_gb=args.min_mem_gb,
                        server_ip=args.server_ip)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c for c in checks if c.status == FAIL]
    print(f"{len(failed)} of {len(checks)} checks failed" if failed else f"all {len(checks)} checks passed "
          f"({sum(c.status == SKIP for c in checks)} skipped)")
    return 1 if failed else 0


def add_arguments(parser) -> None:
    parser.add_argument("--nproc", type=integer(ge=1), default=1, help="workers per node to check cores and memory for")
    parser.add_argument("--hccn-conf", default=None, type=path("maybe_file"),
                        help=f"hccn.conf to check (default {hccn.DEFAULT_HCCN_CONF} when present)")
    parser.add_argument("--rank-table", default=None, type=path("maybe_file"),
                        help="rank table file to validate (and compare with hccn.conf for this server)")
    parser.add_argument("--server-ip", default=None, type=text(nonempty=True),
                        help="this server's IP in the rank table (default: any of this host's addresses)")
    parser.add_argument("--port", type=PORT, action="append", help="TCP port that must be free (repeatable)")
    parser.add_argument("--python", default=sys.executable, type=text(nonempty=True),
                        help="interpreter the workers will use")
    parser.add_argument("--min-mem-gb", type=number(ge=0, le=10**6), default=1.0,
                        help="free memory needed per worker (GiB)")
