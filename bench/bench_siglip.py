"""SigLIP's sigmoid loss per rank as the number of cards grows: ours (clip/loss/sigmoid.py, graph mode) beside
open_clip's SigLipLoss (`dist_impl` gather and bidir, torch + gloo), real processes, in one run.

Per-rank batch b and embedding width E are fixed and W = 1, 2, 4 ranks run as real processes (ours: a CPU
dynamic cluster through the launcher; open_clip: torch.distributed.run with gloo), so the global batch is W x b.
Every rank draws its own normalised features and runs the loss forward + backward (features, scale and bias)
`--repeats` times after one warm-up call; each reports its step times and two peaks of RSS above the RSS just
before the first call: over everything (the first call's compilation and memory pools included) and over the
steps after the first call (the peak is reset in between), the step's own memory, which on a card is the
device memory while the compiler's works in host memory. The row keeps the slowest rank's median step and the
largest peaks. The memory that matters is how each grows with W at fixed b: the logits a rank holds for its
backward are b x b for ours whatever W is, and W x b x b for open_clip's (each received block and its logits
are kept; docs/loss.md has the arithmetic to 64 cards).

Beside them, at W = 1 and in the same rounds, the floor under any SigLIP loss of these shapes: the three matmuls
of one b x b block (the similarities, then the b x E products of the image and text gradients) and nothing else,
once in MindSpore (graph mode, the stock MatMul kernels the loss runs) and once in torch. Their ratio is what the
kernels alone cost ours against open_clip, before any loss arithmetic. Writes bench/results/siglip.json.

    python bench/bench_siglip.py [--batch 1024] [--embed 512] [--worlds 1 2 4] [--repeats 3] [--rounds 1]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "siglip.json"
IMPLS = ("ours", "open_clip_gather", "open_clip_bidir")
FLOORS = ("mindspore_matmuls", "torch_matmuls")


def features(rank: int, batch: int, embed: int):
    import numpy as np

    rng = np.random.RandomState(rank)
    image, text = rng.randn(2, batch, embed).astype(np.float32)
    return (image / np.linalg.norm(image, axis=1, keepdims=True), text / np.linalg.norm(text, axis=1, keepdims=True))


def _peak_rss() -> int:
    """This process's peak RSS (VmHWM) in bytes; unlike ru_maxrss it can be reset (_reset_peak_rss)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:  # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
        handle.write("5")


def measure(step, repeats: int) -> dict:
    """Peak RSS above the RSS before the first call, over the first call (compilation, memory pools) and over
    the steps after it, and the step times after the first call."""
    import psutil

    rss_before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    peak_first = _peak_rss()
    _reset_peak_rss()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak_steps = _peak_rss()
    return {"first_call_s": first, "step_s": times,
            "peak_rss_delta_mib": (max(peak_first, peak_steps) - rss_before) / 2 ** 20,
            "step_peak_rss_delta_mib": (peak_steps - rss_before) / 2 ** 20}


def ours_worker(batch: int, embed: int, repeats: int, out: str) -> None:
    import mindspore as ms
    from mindspore import Parameter, Tensor

    from clip.loss.sigmoid import SigmoidLoss
    from clip.parallel import distributed

    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    bias = Parameter(Tensor(-10.0, ms.float32), name="logit_bias")
    loss = SigmoidLoss(bias, "local", info)
    step_fn = ms.jit(ms.value_and_grad(loss, grad_position=(0, 1, 2), weights=[bias]))
    image, text = (Tensor(x) for x in features(info.rank, batch, embed))
    scale = Tensor(10.0, ms.float32)

    def step():
        value, grads = step_fn(image, text, scale)
        value.asnumpy()
        grads[0][0].asnumpy()

    result = measure(step, repeats)
    Path(out, f"rank{info.rank}.json").write_text(json.dumps(result))


def open_clip_worker(impl: str, batch: int, embed: int, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from bench.openclip_anchor import import_open_clip

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loss_fn = import_open_clip().loss.SigLipLoss(rank=rank, world_size=world, dist_impl=impl)
    image, text = (torch.from_numpy(x).requires_grad_() for x in features(rank, batch, embed))
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)

    def step():
        for t in (image, text, scale, bias):
            t.grad = None
        loss_fn(image, text, scale, bias).backward()

    result = measure(step, repeats)
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def floor_worker(framework: str, batch: int, embed: int, repeats: int, out: str) -> None:
    """The three matmuls of one block: Y = I T^T (b x b), then Y T and Y^T I (b x E), as the forward and the two
    feature gradients of any SigLIP loss on one block need them."""
    image, text = features(0, batch, embed)
    if framework == "torch":
        import torch

        image, text = torch.from_numpy(image), torch.from_numpy(text)

        def step():
            y = image @ text.T  # eager: each product is computed by the time its call returns
            y @ text, y.T @ image
    else:
        import mindspore as ms
        from mindspore import Tensor, nn, ops

        ms.set_context(mode=ms.GRAPH_MODE)

        class Matmuls(nn.Cell):
            def __init__(self):
                super().__init__()
                self.matmul_nt = ops.MatMul(transpose_b=True)
                self.matmul_tn = ops.MatMul(transpose_a=True)

            def construct(self, i, t):
                y = self.matmul_nt(i, t)
                return ops.matmul(y, t), self.matmul_tn(y, i)

        matmuls, image, text = ms.jit(Matmuls()), Tensor(image), Tensor(text)

        def step():
            for product in matmuls(image, text):
                product.asnumpy()

    result = measure(step, repeats)
    Path(out, "rank0.json").write_text(json.dumps(result))


def run(impl: str, world: int, args) -> dict:
    env = {**os.environ, "GLOG_v": "3", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as out:
        worker = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--out", out,
                  "--batch", str(args.batch), "--embed", str(args.embed), "--repeats", str(args.repeats)]
        if impl == "ours" and world > 1:
            # torch.distributed.run gives each of several workers OMP_NUM_THREADS=1 unless it is set; ours get the same,
            # and, since MindSpore's runtime threads do not follow it, each rank is pinned to its own core
            # (--bind-cores; with more ranks than cores, the ranks share the cores round-robin)
            env.setdefault("OMP_NUM_THREADS", "1")
        if impl in FLOORS:
            cmd = worker
        elif impl == "ours":
            cmd = worker if world == 1 else [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n",
                                             str(world), "--bind-cores", "--log-dir", os.path.join(out, "logs"),
                                             "--no-chdir", "--"] + worker
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)] + worker[1:]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{impl} on {world} rank(s) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    median = max(statistics.median(r["step_s"]) for r in ranks)
    return {"impl": impl, "world_size": world, "per_rank_batch": args.batch, "global_batch": world * args.batch,
            "step_ms_median_slowest_rank": 1000 * median,
            "peak_rss_delta_mib_max_rank": max(r["peak_rss_delta_mib"] for r in ranks),
            "step_peak_rss_delta_mib_max_rank": max(r["step_peak_rss_delta_mib"] for r in ranks),
            "held_logits_mib": held_logits_mib(impl, args.batch, world), "ranks": ranks}


def held_logits_mib(impl: str, batch: int, world: int) -> float:
    """float32 b x b blocks alive at a rank's peak: ours takes each block's gradient in the forward and drops the
    block before the next, so only one block's logits, softplus and sigmoid exist at a time (3 blocks) whatever W
    is; open_clip's autograd keeps, for each of the W blocks, the similarity, the labels and the signed logits
    until the backward (3 W blocks). The matmul floors hold one block, the similarities."""
    blocks = 1 if impl in FLOORS else 3 if impl == "ours" else 3 * world
    return blocks * batch * batch * 4 / 2 ** 20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1024, help="per-rank batch b")
    parser.add_argument("--embed", type=int, default=512, help="embedding width E (ViT-B: 512; SO400M: 1152)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="runs of every implementation, interleaved; the fastest "
                                                                "round of each is kept")
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=IMPLS + FLOORS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker in FLOORS:
        return floor_worker(args.worker.split("_")[0], args.batch, args.embed, args.repeats, args.out)
    if args.worker == "ours":
        return ours_worker(args.batch, args.embed, args.repeats, args.out)
    if args.worker:
        return open_clip_worker(args.worker.rsplit("_", 1)[1], args.batch, args.embed, args.repeats, args.out)

    from launcher.safe_write import write_json

    rows = []
    for world in args.worlds:
        # the rounds interleave the implementations, so a burst of load on the shared machine hits one round
        impls = IMPLS + FLOORS if world == 1 else IMPLS
        best, by_round = {}, {impl: [] for impl in impls}
        for _ in range(args.rounds):
            for impl in impls:
                row = run(impl, world, args)
                print(f"{impl:>17} W={world} N={row['global_batch']:<5} step {row['step_ms_median_slowest_rank']:9.1f}"
                      f" ms  peak +{row['peak_rss_delta_mib_max_rank']:7.1f} MiB (steps +{row['step_peak_rss_delta_mib_max_rank']:6.1f})"
                      f"  held logits "
                      f"{row['held_logits_mib']:6.1f} MiB", flush=True)
                by_round[impl].append(row["step_ms_median_slowest_rank"])
                if impl not in best or row["step_ms_median_slowest_rank"] < best[impl]["step_ms_median_slowest_rank"]:
                    best[impl] = row
        rows += [{**best[impl], "step_ms_by_round": by_round[impl]} for impl in impls]
    by = {(r["impl"], r["world_size"]): r for r in rows}
    ratios = {}
    for world in args.worlds:
        best = min(by[(i, world)]["step_ms_median_slowest_rank"] for i in IMPLS[1:])
        ratios[f"W={world}"] = {
            "time_ours_over_best_open_clip": by[("ours", world)]["step_ms_median_slowest_rank"] / best,
            "peak_growth_from_W1_mib": {i: by[(i, world)]["peak_rss_delta_mib_max_rank"]
                                        - by[(i, args.worlds[0])]["peak_rss_delta_mib_max_rank"] for i in IMPLS},
            "step_peak_growth_from_W1_mib": {i: by[(i, world)]["step_peak_rss_delta_mib_max_rank"]
                                             - by[(i, args.worlds[0])]["step_peak_rss_delta_mib_max_rank"]
                                             for i in IMPLS}}
    if 1 in args.worlds:
        ms_floor, torch_floor = by[("mindspore_matmuls", 1)], by[("torch_matmuls", 1)]
        ratios["matmul_floor_W=1"] = {
            "time_mindspore_over_torch": ms_floor["step_ms_median_slowest_rank"]
            / torch_floor["step_ms_median_slowest_rank"],
            "peak_mindspore_minus_torch_mib": ms_floor["peak_rss_delta_mib_max_rank"]
            - torch_floor["peak_rss_delta_mib_max_rank"]}
    payload = {"what": "SigLIP loss forward + backward per rank, real processes; ours graph mode (CPU cluster), "
                       "open_clip SigLipLoss torch + gloo; default threads on both, which on W > 1 workers means "
                       "OMP_NUM_THREADS=1 unless set (torch.distributed.run's default, given to ours too, whose "
                       "ranks are also pinned to their own cores: launcher --bind-cores)",
               "per_rank_batch": args.batch, "embed_dim": args.embed, "repeats": args.repeats, "rounds": args.rounds,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "load_average_at_end": os.getloadavg(),
                           "note": "2 cores shared with other jobs while measured: times are noisy, memory is not"},
               "ratios": ratios, "rows": rows}
    write_json(str(RESULTS), payload)
    print(json.dumps(ratios, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
