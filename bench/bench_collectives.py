"""What a gradient all-reduce costs between CPU ranks here: MindSpore's own, our shared-memory one and torch's gloo.

    python bench/bench_collectives.py [--ranks 2] [--sizes 65536 600000 3750000] [--repeats 20]
                                      [--out bench/results/collectives.json]

Both sides run W ranks with one core each, as the scaling benchmarks do: ours through the launcher (cluster
backend, `--bind-cores`), torch's through torchrun with gloo and one pinned thread per rank (what open_clip's
DDP uses in bench_train.py). Per float32 buffer size: the median time of a sum all-reduce (ours: a compiled
graph, as in the train step, so it includes a graph launch) and of an all-gather of the same buffer, through
MindSpore's CPU collectives and through the shared-memory ones the train step uses on one host
(clip/shm_collectives.py), in the same processes. Then the
overlap check on ours: a compiled graph holding ~10 ms of matmuls and an independent all-reduce of the middle
size, against each alone; if the runtime overlapped them the pair would take less than the sum. The sizes
default to clip_tiny's gradients: 65,536 floats (its indexed token-embedding rows at 2 x 16 x 32 ids),
600,000 (everything but the embedding table) and 3,750,000 (all of them).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_train import run  # noqa: E402

from launcher.safe_write import write_json  # noqa: E402

SIZES = (65_536, 600_000, 3_750_000)


def bandwidth_mb_s(floats: int, ms: float) -> float:
    """float32 buffer bytes per millisecond of the collective, in MB/s (pure)."""
    return round(floats * 4 / 1e6 / (ms / 1e3), 1)


def median_ms(fn, repeats: int, barrier) -> float:
    fn()
    times = []
    for _ in range(repeats):
        barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def mindspore_worker(args) -> None:
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    from clip.parallel import distributed

    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    group = distributed.world_group()

    class AllReduce(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_reduce = ops.AllReduce("sum", group)

        def construct(self, x):
            return self.all_reduce(x)

    class AllGather(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_gather = ops.AllGather(group)

        def construct(self, x):
            return self.all_gather(x)

    class Work(nn.Cell):
        def construct(self, a):
            for _ in range(8):
                a = ops.matmul(a, a) * 0.01
            return a

    class Both(nn.Cell):
        """The matmuls and an all-reduce that does not depend on them, in one graph."""

        def __init__(self):
            super().__init__()
            self.all_reduce = ops.AllReduce("sum", group)
            self.work = Work()

        def construct(self, x, a):
            return self.all_reduce(x), self.work(a)

    def call(cell, *inputs):
        out = cell(*inputs)
        for tensor in (out if isinstance(out, tuple) else (out,)):
            tensor.asnumpy()

    class Shared(nn.Cell):
        def __init__(self, op):
            super().__init__()
            self.op = op

        def construct(self, x):
            return self.op(x)

    transport = distributed.step_collectives(info)
    result = {}
    for n in args.sizes:
        x = ms.Tensor(np.ones(n, np.float32))
        cells = {"all_reduce_ms": AllReduce(), "all_gather_ms": AllGather(),
                 "shm_all_reduce_ms": Shared(transport.all_reduce), "shm_all_gather_ms": Shared(transport.all_gather)}
        result[str(n)] = {key: median_ms(lambda: call(cell, x), args.repeats, distributed.barrier)
                          for key, cell in cells.items()}
    middle = sorted(args.sizes)[len(args.sizes) // 2]
    x = ms.Tensor(np.ones(middle, np.float32))
    a = ms.Tensor(np.random.default_rng(0).random((384, 384), dtype=np.float32))
    work, reduce_cell, both = Work(), AllReduce(), Both()
    overlap = {"floats": middle, "matmuls_ms": median_ms(lambda: call(work, a), args.repeats, distributed.barrier),
               "all_reduce_ms": median_ms(lambda: call(reduce_cell, x), args.repeats, distributed.barrier),
               "together_ms": median_ms(lambda: call(both, x, a), args.repeats, distributed.barrier)}
    if info.rank == 0:
        Path(args.result).write_text(json.dumps({"sizes": result, "overlap": overlap}))


def torch_worker(args) -> None:
    import torch
    import torch.distributed as dist

    psutil.Process().cpu_affinity([int(os.environ["LOCAL_RANK"]) % psutil.cpu_count()])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    result = {}
    for n in args.sizes:
        x = torch.ones(n)
        parts = [torch.empty(n) for _ in range(world)]
        result[str(n)] = {"all_reduce_ms": median_ms(lambda: dist.all_reduce(x), args.repeats, dist.barrier),
                          "all_gather_ms": median_ms(lambda: dist.all_gather(parts, x), args.repeats, dist.barrier)}
    if dist.get_rank() == 0:
        Path(args.result).write_text(json.dumps({"sizes": result}))
    dist.destroy_process_group()


def measure(kind: str, ranks: int, args, workdir: Path) -> dict:
    result = workdir / f"{kind}.json"
    worker = [sys.executable, str(Path(__file__).resolve()), f"--{kind}-worker", "--repeats", str(args.repeats),
              "--result", str(result), "--sizes"] + [str(n) for n in args.sizes]
    if kind == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] + worker[1:]
    else:
        cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(ranks), "--bind-cores",
               "--log-dir", str(workdir / "logs"), "--no-chdir", "--"] + worker
    run(cmd, timeout=1800)
    out = json.loads(result.read_text())
    out["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="float32 elements per buffer")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "collectives.json"))
    parser.add_argument("--mindspore-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mindspore_worker:
        mindspore_worker(args)
        return 0
    if args.torch_worker:
        torch_worker(args)
        return 0
    results = {"machine": {"cpus": psutil.cpu_count(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
               "ranks": args.ranks, "cores_per_rank": 1, "unit": "ms per call, median; MB/s = float32 bytes / time"}
    with tempfile.TemporaryDirectory() as tmp:
        ours = measure("mindspore", args.ranks, args, Path(tmp))
        gloo = measure("torch", args.ranks, args, Path(tmp))
    table = []
    for n in args.sizes:
        o, g = ours["sizes"][str(n)], gloo["sizes"][str(n)]
        row = {"floats": n, "mindspore_all_reduce_ms": o["all_reduce_ms"], "gloo_all_reduce_ms": g["all_reduce_ms"],
               "mindspore_all_reduce_mb_s": bandwidth_mb_s(n, o["all_reduce_ms"]),
               "gloo_all_reduce_mb_s": bandwidth_mb_s(n, g["all_reduce_ms"]),
               "all_reduce_time_ratio": round(o["all_reduce_ms"] / g["all_reduce_ms"], 2),
               "mindspore_all_gather_ms": o["all_gather_ms"], "gloo_all_gather_ms": g["all_gather_ms"],
               "shm_all_reduce_ms": o["shm_all_reduce_ms"], "shm_all_reduce_mb_s": bandwidth_mb_s(n, o["shm_all_reduce_ms"]),
               "shm_all_reduce_time_ratio_vs_gloo": round(o["shm_all_reduce_ms"] / g["all_reduce_ms"], 2),
               "shm_all_gather_ms": o["shm_all_gather_ms"]}
        table.append(row)
        print(f"{n:>9} floats: all-reduce MindSpore {o['all_reduce_ms']:8.2f} ms ({row['mindspore_all_reduce_mb_s']} MB/s), "
              f"shared memory {o['shm_all_reduce_ms']:8.2f} ms ({row['shm_all_reduce_mb_s']} MB/s), "
              f"gloo {g['all_reduce_ms']:8.2f} ms ({row['gloo_all_reduce_mb_s']} MB/s); all-gather MindSpore "
              f"{o['all_gather_ms']:.2f}, shared memory {o['shm_all_gather_ms']:.2f}, gloo {g['all_gather_ms']:.2f} ms",
              flush=True)
    overlap = ours["overlap"]
    overlap["overlapped"] = overlap["together_ms"] < 0.9 * (overlap["matmuls_ms"] + overlap["all_reduce_ms"])
    print(f"overlap: matmuls {overlap['matmuls_ms']} ms + all-reduce {overlap['all_reduce_ms']} ms, in one graph "
          f"{overlap['together_ms']} ms (overlapped: {overlap['overlapped']})", flush=True)
    results.update(table=table, overlap=overlap, runs={"mindspore": ours, "gloo": gloo})
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, results, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
