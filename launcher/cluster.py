"""Who and where am I: this server's IP, and node rank / node count / master from Slurm or MPI.

Pure functions take the environment (a dict) or interface lists; only `interfaces()` and
`detect_server_ip()` touch the machine. Loopback addresses are never chosen as a server IP: a rank
table naming 127.0.x.x is what breaks multi-server jobs started with the classic tools.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from launcher.errors import UserError

# Container and VPN bridges: their addresses are not reachable from other servers.
VIRTUAL_PREFIXES = ("docker", "veth", "virbr", "br-", "cni", "flannel", "vxlan", "tun", "tap")


def server_ip_candidates(addresses: Mapping[str, list[str]], up: set[str] | None = None) -> list[str]:
    """Usable IPv4 addresses, best first: never loopback; interfaces that are down skipped; physical
    interfaces in their order, then virtual bridges (docker0, ...), then link-local 169.254.x.x."""
    ranked: list[tuple[int, int, str]] = []
    for position, (iface, ips) in enumerate(addresses.items()):
        if up is not None and iface not in up:
            continue
        for text in ips:
            try:
                ip = ipaddress.IPv4Address(text)
            except ValueError:
                continue
            if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
                continue
            tier = 2 if ip.is_link_local else 1 if iface.startswith(VIRTUAL_PREFIXES) else 0
            ranked.append((tier, position, str(ip)))
    best: list[str] = []
    for _, _, ip in sorted(ranked):
        if ip not in best:
            best.append(ip)
    return best


def interfaces() -> tuple[dict[str, list[str]], set[str]]:
    """IPv4 addresses per interface and the set of interfaces that are up (psutil)."""
    import psutil

    addresses = {iface: [a.address for a in addrs if a.family == socket.AF_INET]
                 for iface, addrs in psutil.net_if_addrs().items()}
    up = {iface for iface, stats in psutil.net_if_stats().items() if stats.isup}
    return addresses, up


def detect_server_ip() -> str:
    """First non-loopback IPv4 address of an interface that is up."""
    addresses, up = interfaces()
    candidates = server_ip_candidates(addresses, up)
    if not candidates:
        raise UserError("no non-loopback IPv4 address on any interface that is up; pass --server-ip")
    return candidates[0]


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: "node[03-05,9],gpu1" -> "node03", "r[1-2]-n[07-08]" -> "r1-n07"."""
    text = nodelist.strip()
    depth, end = 0, len(text)
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    head = text[:end]
    if not head or depth < 0 or head.count("[") != head.count("]"):
        raise UserError(f"SLURM_JOB_NODELIST {nodelist!r}: malformed node list")

    def first_of(match: re.Match) -> str:
        return re.split(r"[,-]", match.group(1))[0]

    host = re.sub(r"\[([^\]]*)\]", first_of, head)
    if not host or "[" in host or "]" in host:
        raise UserError(f"SLURM_JOB_NODELIST {nodelist!r}: malformed node list")
    return host


@dataclass(frozen=True)
class NodeInfo:
    """Placement of this launcher among the nodes, and where it came from ("slurm", "mpi" or "single")."""

    node_rank: int
    nnodes: int
    master_addr: str | None
    source: str
    process_rank: int | None = None
    process_count: int | None = None
    local_rank: int | None = None


def _int_var(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value is None or value == "":
            continue
        try:
            number = int(value)
        except ValueError:
            raise UserError(f"environment variable {name}={value!r}: expected an integer") from None
        if number < 0:
            raise UserError(f"environment variable {name}={value!r}: expected a non-negative integer")
        return number
    return None


def slurm_info(env: Mapping[str, str]) -> NodeInfo | None:
    """Node rank, node count and master host from a Slurm allocation, None outside Slurm."""
    if "SLURM_NODEID" not in env and "SLURM_JOB_ID" not in env:
        return None
    node_rank = _int_var(env, "SLURM_NODEID") or 0
    nnodes = _int_var(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES") or 1
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    master = first_host(nodelist) if nodelist else None
    if node_rank >= nnodes:
        raise UserError(f"environment variable SLURM_NODEID={node_rank}: not below SLURM_NNODES={nnodes}")
    return NodeInfo(node_rank, nnodes, master, "slurm",
                    process_rank=_int_var(env, "SLURM_PROCID"),
                    process_count=_int_var(env, "SLURM_NTASKS"),
                    local_rank=_int_var(env, "SLURM_LOCALID"))


def mpi_info(env: Mapping[str, str]) -> NodeInfo | None:
    """Rank and size of this process under mpirun (Open MPI or MPICH/Hydra), None outside MPI."""
    rank = _int_var(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
    size = _int_var(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    if rank is None or size is None:
        return None
    if rank >= size:
        raise UserError(f"MPI rank {rank} is not below the MPI world size {size}")
    return NodeInfo(rank, size, None, "mpi", process_rank=rank, process_count=size,
                    local_rank=_int_var(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"))


def node_info(env: Mapping[str, str]) -> NodeInfo:
    """Slurm first, then MPI, else a single node of rank 0."""
    return slurm_info(env) or mpi_info(env) or NodeInfo(0, 1, None, "single")
