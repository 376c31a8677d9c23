"""The train step's collectives through shared memory, for CPU jobs whose ranks all run on one host.

Why: MindSpore 2.10's CPU collectives go through loopback TCP in small reads and keep the CPU busy, with a
fixed cost per call however small (docs/training.md has the measurements). Ranks on one host can instead
exchange through a shared segment, at memory speed, as NCCL and gloo do between processes on one machine.

Two C++ kernels (clip/native/shm_collectives.cc) run as `ops.Custom(func_type="aot")`, built like
clip/native/kernels.py's: a float32 sum and an all-gather (any dtype, bit for bit). In the sum every element
is added once, by one rank, in rank order, so all ranks get the same bits; with two ranks these are the bits
of MindSpore's AllReduce (a + b). They carry the step's collectives only: the gradient buckets, the token
ids, and the contrastive loss's feature gather and its backward. The Python-side collectives (logging,
checks) stay MindSpore's.

The kernels run outside MindSpore's collective machinery, so nothing but the graph orders them, and every
rank must make the same calls in the same order. The gradient buckets differ from one another, so the
reducer chains them with `ops.depend` after every gradient (clip/native/buckets.py). The loss's gather and its
backward come in the order of the data; a step that evaluates the loss both alone and inside its gradient
(clip.train.step) gathers the same features twice, or once where MindSpore merges the two, and two
identical gathers give the same result in either order. Each call checks that the ranks agree on its
count, kind and size, and fails with a one-line error on every rank if not. A rank never waits forever: a
peer process that has exited is an error at once, and a peer that is alive but makes no progress (stopped,
deadlocked) is an error after `CLIP_SHM_COLLECTIVES_TIMEOUT` seconds (default 600), both naming the peer's
rank and pid. The timeout only bounds waits inside the train step; the loop's own waits (other ranks while
rank 0 evaluates) use MindSpore's barrier, so it need only outlast the longest stretch one rank works alone
between two steps (its first compile, a checkpoint save).

`connect` is collective: every rank calls it at the same point, and the ranks agree through MindSpore's own
all-gather on whether to use the segment. The segment has no name at any moment: rank 0 creates it as an
anonymous memfd, the others open it through /proc/<pid of rank 0>/fd/<n> and check a random token rank 0
wrote into it, and rank 0 closes its descriptor once all have mapped it. The memory lives exactly as long
as some rank maps it, so a `kill -9` of any rank at any moment leaves nothing in /dev/shm or elsewhere. On
another backend, across hosts, with `CLIP_SHM_COLLECTIVES=off`, or when any rank cannot build, load, open or
map it, every rank keeps MindSpore's collectives (a warning line says why, except for `off`).
"""
from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Mapping, NamedTuple, Optional

import numpy as np

from clip.native import kernels
from launcher.errors import UserError

SOURCE = Path(__file__).resolve().parent / "shm_collectives.cc"
SWITCH_ENV = "CLIP_SHM_COLLECTIVES"
TIMEOUT_ENV = "CLIP_SHM_COLLECTIVES_TIMEOUT"
# Long enough for a rank that works alone between two steps (a slow first compile, a large checkpoint save),
# short enough that a stuck job fails the same hour.
DEFAULT_TIMEOUT = 600.0
MAX_RANKS = 64  # kMaxRanks in the kernel


class Transport(NamedTuple):
    """The shared-memory collectives of one job: ``all_reduce(x)`` sums float32 over ranks, ``all_gather(x)``
    concatenates every rank's x along axis 0."""
    all_reduce: object
    all_gather: object


# ---------------------------------------------------------------- pure helpers

def possible(device_target: str, world_size: int) -> bool:
    """Whether the job could use the segment at all (the same answer on every rank: no collective needed)."""
    return device_target == "CPU" and 2 <= world_size <= MAX_RANKS


def switched_off(env: Mapping[str, str]) -> bool:
    return env.get(SWITCH_ENV, "").strip().lower() == kernels.OFF


def timeout_seconds(env: Mapping[str, str]) -> float:
    """How long a collective waits for a live peer (pure); a bad value is a one-line UserError."""
    raw = env.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise UserError(f"{TIMEOUT_ENV}={env[TIMEOUT_ENV]!r}: expected a number of seconds > 0 "
                        f"(default {DEFAULT_TIMEOUT:g})")
    return value


def host_id(hostname: str, boot_id: str) -> int:
    """A number that is the same for processes on one booted machine (pure)."""
    return int.from_bytes(hashlib.sha256(f"{hostname}\0{boot_id}".encode()).digest()[:7], "little")


def agree(offers: np.ndarray) -> Optional[str]:
    """Why the ranks cannot share a segment, or None when they can (pure). ``offers`` is [W, 4]:
    each rank's (offers it, host id, pid, token)."""
    if not offers[:, 0].all():
        return f"rank {int(np.argmin(offers[:, 0]))} cannot use it"
    if (offers[:, 1] != offers[0, 1]).any():
        return "the ranks run on more than one host"
    return None


def segment_path(pid: int, fd: int) -> str:
    """Where another process opens rank 0's segment: its descriptor, seen through /proc (no name to leak)."""
    return f"/proc/{pid}/fd/{fd}"


def attach_error(code: int, path: str) -> str:
    """The words for ShmAttach's return code (pure)."""
    if code == errno.EXDEV:
        return f"{path} is not rank 0's segment (are the ranks in different PID namespaces?)"
    return f"cannot map {path}: {os.strerror(code)}"


# ---------------------------------------------------------------- the library and the segment (I/O)

@functools.lru_cache(maxsize=None)
def _library() -> Optional[str]:
    try:
        return kernels.build(source_file=SOURCE)
    except (OSError, subprocess.SubprocessError) as err:
        _warn(kernels.failure(err, SOURCE))
        return None


def _warn(why: str) -> None:
    print(f"warning: {why}; the step's collectives use MindSpore's CPU transport (slower); "
          f"set {SWITCH_ENV}={kernels.OFF} to silence this", file=sys.stderr)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _create(size: int) -> int:
    """A descriptor of a new anonymous segment, zero-filled (a zero header is the kernels' starting state);
    its pages are reserved now, so a lack of memory is an error here rather than a SIGBUS mid-step. It has
    no name, and is freed when the last descriptor or mapping of it goes, however its processes end."""
    fd = os.memfd_create("mindclip-collectives", os.MFD_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _attach(library: str, path: str, rank: int, world: int, token: int, timeout: float) -> int:
    lib = ctypes.CDLL(library)  # the same loaded library as the kernels': dlopen shares one copy per file
    lib.ShmAttach.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_double]
    return lib.ShmAttach(path.encode(), rank, world, token, timeout)


def _bytes(library: str, world: int) -> int:
    lib = ctypes.CDLL(library)
    lib.ShmBytes.restype = ctypes.c_int64
    return int(lib.ShmBytes(world))


def connect(rank: int, world: int, device_target: str, gather_rows) -> Optional[Transport]:
    """The collectives over a segment every rank has mapped, or None (every rank gets the same answer).

    Collective unless the job cannot use a segment at all: ``gather_rows(int64 array)`` must return every
    rank's array stacked, bit-exact.
    """
    if not possible(device_target, world):
        return None
    timeout = timeout_seconds(os.environ)  # before any exchange, so a bad value fails every rank alike
    library = None if switched_off(os.environ) else _library()
    if not map_segment(rank, world, library, gather_rows, timeout):
        return None
    return _transport(library, world)


def map_segment(rank: int, world: int, library: Optional[str], gather_rows, timeout: float) -> bool:
    """Map one segment on every rank, or none (every rank gets the same answer); collective.

    Rank 0 creates and maps it, then the others open it by rank 0's descriptor; no step of this leaves
    anything behind if a rank is killed in it.
    """
    usable = library is not None and hasattr(os, "memfd_create")
    offers = gather_rows(np.array([usable, host_id(socket.gethostname(), _boot_id()), os.getpid(),
                                   secrets.randbits(62)], np.int64))
    why = agree(offers)
    if why is not None:
        if library is not None and rank == 0:
            _warn(f"shared-memory collectives are off: {why}")
        return False
    token = int(offers[0, 3])
    error, fd = "", -1
    if rank == 0:
        try:
            fd = _create(_bytes(library, world))
            code = _attach(library, segment_path(os.getpid(), fd), rank, world, token, timeout)
            if code:
                error = attach_error(code, "the new segment")
        except OSError as err:
            error = f"cannot create the segment: {err.strerror}"
    try:
        created = gather_rows(np.array([error == "", fd], np.int64))
        if rank != 0 and created[0, 0]:
            path = segment_path(int(offers[0, 2]), int(created[0, 1]))
            code = _attach(library, path, rank, world, token, timeout)
            if code:
                error = attach_error(code, path)
        mapped = gather_rows(np.array([error == ""], np.int64))
    finally:
        if fd >= 0:
            os.close(fd)  # every rank has it mapped (or has given up): the mappings keep it alive
    if not mapped.all():
        if error:
            _warn(f"shared-memory collectives are off on rank {rank}: {error}")
        return False
    return True


def _transport(library: str, world: int) -> Transport:
    from mindspore import ops
    return Transport(
        all_reduce=ops.Custom(f"{library}:ShmAllReduce", func_type="aot",
                              out_shape=lambda x: x, out_dtype=lambda x: x),
        all_gather=ops.Custom(f"{library}:ShmAllGather", func_type="aot",
                              out_shape=lambda x: [world * x[0]] + list(x[1:]), out_dtype=lambda x: x))
