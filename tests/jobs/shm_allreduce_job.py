"""One worker of a 2-rank dynamic cluster that exercises the shared-memory all-reduce's edges
(clip.shm_allreduce): its segment's name is gone once every rank has mapped it, sizes across a chunk
boundary sum like MindSpore's AllReduce, and ranks that disagree get an error, not a hang or a wrong sum.
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

from clip import distributed, shm_allreduce

CHUNK = 512 * 1024  # kChunk in clip/assets/shm_allreduce.cc


class Sum(nn.Cell):
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
    """The first line of the error `call` raises, or None; and how long it took."""
    started = time.monotonic()
    try:
        call()
    except RuntimeError as err:
        return str(err).strip().splitlines()[0], time.monotonic() - started
    return None, time.monotonic() - started


def main(out_dir):
    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    pids = distributed._gather_rows(np.array([os.getpid()], np.int64))[:, 0].tolist()
    op = distributed.shared_sum(info)
    distributed.barrier()  # rank 0 removes the name once every rank has mapped the segment
    results = {"shared": op is not None,
               "segments_left": glob.glob(os.path.join(shm_allreduce.SHM_DIR, f"mindclip-allreduce-{pids[0]}-*"))}
    reference = Sum(ops.AllReduce("sum", distributed.world_group()))
    rng = np.random.RandomState(info.rank)
    results["max_diff"] = {}
    for n in (0, 1, 17, CHUNK - 1, CHUNK + 1, 2 * CHUNK + 100):
        x = ms.Tensor(rng.randn(n).astype(np.float32))
        results["max_diff"][str(n)] = float(np.abs(Sum(op)(x).asnumpy() - reference(x).asnumpy()).max(initial=0.0))
    # the ranks ask for different sizes: both fail, and every later call on the segment fails too
    results["mismatch"] = failure(lambda: Sum(op)(ms.Tensor(np.ones(5 + info.rank, np.float32))).asnumpy())
    results["after_mismatch"] = failure(lambda: Sum(op)(ms.Tensor(np.ones(5, np.float32))).asnumpy())
    # a fresh segment works again
    fresh = Sum(shm_allreduce.connect(info.rank, info.world_size, "CPU", distributed._gather_rows))
    results["fresh"] = fresh(ms.Tensor(np.full(3, info.rank + 1.0, np.float32))).asnumpy().tolist()
    write(out_dir, info.rank, results)


if __name__ == "__main__":
    main(sys.argv[1])
