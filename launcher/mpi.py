"""Cluster-wide rank-table generation under mpirun: one process per server, same merged table everywhere.

Each process builds its own server's table, then all of them allgather (table or error) so that a
bad hccn.conf on one server makes every server stop with that server's message instead of hanging.
mpi4py is imported here and nowhere else.
"""
from __future__ import annotations

from collections.abc import Callable

from launcher import ranktable
from launcher.errors import UserError

RANK_FIELD = "{rank}"


def expand(value: str | None, rank: int) -> str | None:
    """Per-process values from one command line: "{rank}" becomes this process's MPI rank."""
    return None if value is None else value.replace(RANK_FIELD, str(rank))


def outcome(build: Callable[[], dict]) -> tuple[str, object]:
    """("ok", table) or ("error", message): something every process can receive."""
    try:
        return "ok", build()
    except UserError as exc:
        return "error", str(exc)
    except Exception as exc:  # a bug on one server must not leave the others waiting forever
        return "error", f"{exc.__class__.__name__}: {exc}"


def combine(outcomes: list[tuple[str, object]], order: list[str] | None = None) -> dict:
    """Merged table from every process's outcome; the first failed process's error otherwise."""
    for rank, (kind, payload) in enumerate(outcomes):
        if kind != "ok":
            raise UserError(f"mpi rank {rank}: {payload}")
    tables = [payload for _, payload in outcomes]
    names = [f"mpi rank {rank} (server {t['server_list'][0]['server_id']})" for rank, t in enumerate(tables)]
    return ranktable.merge(tables, order=order, names=names)


def allgather_table(build: Callable[[int], dict], order: list[str] | None = None) -> tuple[int, int, dict]:
    """(mpi rank, mpi size, merged table): `build(rank)` makes this server's table."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError("--mpi needs mpi4py and an MPI library (pip install 'mindclip[mpi]')") from None
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    everyone = comm.allgather(outcome(lambda: build(rank)))
    return rank, comm.Get_size(), combine(everyone, order)
