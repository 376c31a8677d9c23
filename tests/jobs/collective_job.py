"""A small real MindSpore job for launcher tests: collectives with known answers, plus failure modes.

Every worker initialises communication from the MS_* / RANK_* environment the launcher set, runs an
AllReduce(SUM) and an AllGather whose expected values depend only on the world size, and writes its
result to `<out>/result_<rank>.json`. `--fail-mode` makes `--fail-rank` misbehave *after* the first
AllReduce, so that its peers are blocked in the next collective exactly like in a real training job.
"""
import argparse
import json
import os
import signal
import sys
import time

MODES = ("none", "exit3", "raise", "sigkill", "hang", "fail_once")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory for result_<rank>.json")
    parser.add_argument("--fail-mode", choices=MODES, default="none")
    parser.add_argument("--fail-rank", type=int, default=1)
    parser.add_argument("--marker", help="fail_once: fail while this file does not exist, then create it")
    parser.add_argument("--rounds", type=int, default=2, help="AllReduce rounds after the failure point")
    return parser.parse_args(argv)


def write_json(path, payload):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
    os.replace(tmp, path)


def misbehave(args, rank):
    """Fail the way --fail-mode says, on --fail-rank only; `<out>/failed_at.json` records when."""
    if rank != args.fail_rank or args.fail_mode == "none":
        return
    if args.fail_mode != "fail_once" or not os.path.exists(args.marker):
        write_json(os.path.join(args.out, "failed_at.json"), {"rank": rank, "time": time.time()})
    if args.fail_mode == "exit3":
        sys.stdout.flush()
        os._exit(3)
    if args.fail_mode == "raise":
        raise RuntimeError(f"collective_job: deliberate failure on rank {rank}")
    if args.fail_mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if args.fail_mode == "hang":
        while True:
            time.sleep(1)
    if args.fail_mode == "fail_once" and not os.path.exists(args.marker):
        write_json(args.marker, {"failed_rank": rank})
        print(f"collective_job: rank {rank} fails once (marker {args.marker})", flush=True)
        os._exit(3)


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    import mindspore as ms
    from mindspore import ops
    from mindspore.communication import get_group_size, get_rank, init

    imported = time.time()
    ms.set_device("CPU")
    init()
    initialised = time.time()
    rank, size = get_rank(), get_group_size()
    value = ms.Tensor([[rank + 1.0, 10.0 * (rank + 1)]], ms.float32)
    summed = ops.AllReduce(ops.ReduceOp.SUM)(value).asnumpy()
    first_allreduce = time.time()
    print(f"collective_job: rank {rank}/{size} past first AllReduce", flush=True)
    misbehave(args, rank)
    gathered = ops.AllGather()(ms.Tensor([[float(rank)]], ms.float32)).asnumpy()
    extra = 0.0
    for _ in range(args.rounds):
        extra += float(ops.AllReduce(ops.ReduceOp.SUM)(ms.Tensor([1.0], ms.float32)).asnumpy()[0])
    write_json(os.path.join(args.out, f"result_{rank}.json"), {
        "rank": rank,
        "world_size": size,
        "allreduce": summed.ravel().tolist(),
        "allgather": gathered.ravel().tolist(),
        "extra": extra,
        "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("MS_", "RANK_", "DEVICE_"))},
        "cwd": os.getcwd(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "started": started,
        "imported": imported,
        "initialised": initialised,
        "first_allreduce": first_allreduce,
    })
    print(f"collective_job: rank {rank} done", flush=True)


if __name__ == "__main__":
    main()
