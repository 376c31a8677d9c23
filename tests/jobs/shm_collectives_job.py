"""One worker of a 2-rank dynamic cluster that exercises the shared-memory collectives' edges
(clip.native.shm_collectives): the segment never has a name in /dev/shm, sums across the chunk
boundaries are MindSpore's AllReduce's bits, gathers of several dtypes are exact, and ranks that disagree
get an error, not a hang or a wrong result.
Writes `<out>/worker_<rank>.json` with what it saw.
"""
import glob
import json
import os
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from clip.native import shm_collectives
from clip.parallel import distributed

CHUNK = 512 * 1024  # kChunk in clip/native/shm_collectives.cc: floats per slot
SUM_SIZES = (0, 1, 17, CHUNK - 1, CHUNK + 1, 2 * CHUNK + 100)
# (dtype, shape of every rank's part): bytes across the slot boundary, and the kinds the step gathers
GATHERS = (("float32", (0, 4)), ("float32", (3, 5)), ("float32", (CHUNK + 3,)), ("int32", (2, 7)),
           ("float16", (2 * CHUNK + 1,)))


class Call(nn.Cell):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def construct(self, x):
        return self.op(x)


def write(out_dir, rank, results):
    path = os.path.join(out_dir, f"worker_{rank}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    os.replace(path + ".tmp", path)


def failure(call):
    """The start of the error `call` raises, or None; and how long it took."""
    started = time.monotonic()
    try:
        call()
    except RuntimeError as err:
        return str(err).strip()[:600], time.monotonic() - started
    return None, time.monotonic() - started


def main(out_dir):
    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    transport = distributed.step_collectives(info)
    distributed.barrier()
    results = {"shared": transport is not None,
               "segments_left": glob.glob("/dev/shm/mindclip-*")}
    reference = Call(ops.AllReduce("sum", distributed.world_group()))
    total, gather = Call(transport.all_reduce), Call(transport.all_gather)
    rng = np.random.RandomState(info.rank)
    results["sum_max_diff"] = {}
    for n in SUM_SIZES:
        x = ms.Tensor(rng.randn(n).astype(np.float32))
        results["sum_max_diff"][str(n)] = float(np.abs(total(x).asnumpy() - reference(x).asnumpy()).max(initial=0.0))
    results["gather_exact"] = {}
    for dtype, shape in GATHERS:
        mine = owned(info.rank, dtype, shape)
        expected = np.concatenate([owned(r, dtype, shape) for r in range(info.world_size)])
        got = gather(ms.Tensor(mine)).asnumpy()
        results["gather_exact"][f"{dtype}{list(shape)}"] = bool(
            got.dtype == expected.dtype and got.shape == expected.shape and got.tobytes() == expected.tobytes())
    # rank 0 sums while rank 1 gathers: both fail
    ones = ms.Tensor(np.ones(4, np.float32))
    results["mismatch"] = failure(lambda: (total if info.rank == 0 else gather)(ones).asnumpy())
    # a fresh segment works again
    fresh = shm_collectives.connect(info.rank, info.world_size, "CPU", distributed._gather_rows)
    mine = ms.Tensor(np.full(3, info.rank + 1.0, np.float32))
    results["fresh"] = [Call(fresh.all_reduce)(mine).asnumpy().tolist(), Call(fresh.all_gather)(mine).asnumpy().tolist()]
    write(out_dir, info.rank, results)


def owned(rank, dtype, shape):
    return (np.random.RandomState(300 + rank).randn(*shape) * 1000).astype(dtype)


if __name__ == "__main__":
    main(sys.argv[1])
