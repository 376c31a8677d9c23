"""A tiny real MindSpore job for the launcher's diagnosis tests: rounds of AllReduce with a heartbeat
after each; `--fail-mode` makes `--fail-rank` misbehave after the first round while the others wait in
the next one. Uses the launcher's worker side as any third-party Python worker would
(`from launcher import record, heartbeat, install`: error file, heartbeats, SIGUSR1 stacks)."""
import argparse
import json
import os
import signal
import sys
import time

from launcher import beat_while_waiting, heartbeat, install, record

SLOW_SECONDS = 7


def hang():
    while True:
        time.sleep(0.2)  # the hung rank's line


def misbehave(mode: str, out: str, rank: int) -> None:
    with open(os.path.join(out, "failed_at.json"), "w", encoding="utf-8") as handle:
        json.dump({"rank": rank, "time": time.time()}, handle)
    if mode == "raise":
        raise ValueError(f"deliberate failure on rank {rank}")
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        hang()
    if mode == "slow":  # a long evaluation on one rank: it beats as it works
        until = time.time() + SLOW_SECONDS
        while time.time() < until:
            time.sleep(0.2)
            heartbeat()


@record
def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail-mode", choices=("none", "raise", "sigkill", "hang", "slow"), default="none")
    parser.add_argument("--fail-rank", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    install()
    import mindspore as ms
    from mindspore import ops
    from mindspore.communication import get_rank, init

    ms.set_device("CPU")
    init()
    rank = get_rank()
    all_reduce = ops.AllReduce()
    for round_ in range(args.rounds):
        # with --fail-mode slow, the other ranks wait here for the slow one as clip.train's ranks wait for rank 0's
        # evaluation
        waiting = round_ == 1 and args.fail_mode == "slow" and rank != args.fail_rank
        with beat_while_waiting(60 if waiting else 0):
            all_reduce(ms.Tensor([1.0], ms.float32)).asnumpy()
        heartbeat(force=True)
        if round_ == 0 and rank == args.fail_rank and args.fail_mode != "none":
            misbehave(args.fail_mode, args.out, rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())
