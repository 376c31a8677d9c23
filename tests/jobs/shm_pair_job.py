"""One of two processes that set up clip.native.shm_collectives' segment with the real library and protocol
(`map_segment`), exchanging their rows through a socket the test passes in instead of MindSpore's all-gather,
so that a pair starts in a fraction of a second and a test can kill, stop or let exit either one at will.

    python shm_pair_job.py RANK SOCKET_FD MODE

MODE:
- `connect`: print "ready", then map a fresh segment again and again for 1 s (a kill lands anywhere in the
  protocol).
- `stall`: map a segment; rank 1 then stops itself (SIGSTOP) before any collective, rank 0 sums through
  MindSpore's `ops.Custom` and prints "failed after <seconds>" or "no error".
- `exit`: the same, but rank 1 exits instead of stopping.
"""
import os
import signal
import socket
import struct
import sys
import time

import numpy as np

from clip.native import shm_collectives


def gather_rows(peer: socket.socket, rank: int):
    """Both ranks' arrays stacked in rank order, like clip.parallel.distributed._gather_rows for 2 ranks."""
    def gather(array: np.ndarray) -> np.ndarray:
        data = np.ascontiguousarray(array).tobytes()
        peer.sendall(struct.pack("<q", len(data)) + data)
        size = struct.unpack("<q", receive(peer, 8))[0]
        theirs = np.frombuffer(receive(peer, size), array.dtype).reshape(array.shape)
        return np.stack([array, theirs] if rank == 0 else [theirs, array])
    return gather


def receive(peer: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = peer.recv(size)
        if not chunk:
            raise SystemExit("peer is gone")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main(rank: int, fd: int, mode: str) -> None:
    peer = socket.socket(fileno=fd)
    library = shm_collectives._library()
    gather = gather_rows(peer, rank)
    timeout = shm_collectives.timeout_seconds(os.environ)
    if mode == "connect":
        print("ready", flush=True)
        started = time.monotonic()
        while gather(np.array([time.monotonic() - started < 1.0], np.int64)).all():
            assert shm_collectives.map_segment(rank, 2, library, gather, timeout)
        return
    if rank == 0:
        import mindspore as ms
        sum_ = shm_collectives._transport(library, 2).all_reduce
    assert shm_collectives.map_segment(rank, 2, library, gather, timeout)
    if rank == 1:
        if mode == "stall":
            os.kill(os.getpid(), signal.SIGSTOP)
        return
    started = time.monotonic()
    try:
        sum_(ms.Tensor(np.ones(4, np.float32))).asnumpy()
    except RuntimeError:
        print("failed after", time.monotonic() - started, flush=True)
    else:
        print("no error", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
