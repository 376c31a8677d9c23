"""Cost of the contrastive loss per rank: `local` vs `full` vs `local_only`, as the number of cards grows.

Per-card batch B is fixed (64) and the world size W grows, so the global batch N = W*B runs 64..4096.
Ranks are simulated: one process computes rank 0's share, forward and backward under ms.jit, from
gathered features it is handed (communication is not timed). `local` holds two B x N logit matrices
(memory ~ B*N = B*W*B, linear in W), `full` one N x N matrix (quadratic in W), `local_only` B x B.

Each (mode, W) runs in a fresh process, so peak memory (ru_maxrss above the RSS just before the first
loss call, compilation included) is not polluted by earlier runs. Writes bench/results/loss.json.

    python bench/bench_loss.py [--batch 64] [--embed 512] [--max-world 64] [--repeats 5]
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from launcher.safe_write import write_json

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "loss.json"
MODES = ("local", "full", "local_only")


def logits_elements(mode: str, batch: int, world: int) -> int:
    """Logit entries one rank materialises (each also has a same-sized gradient and softmax buffer)."""
    n = batch * world
    return {"local": 2 * batch * n, "full": n * n, "local_only": batch * batch}[mode]


def child(mode: str, batch: int, world: int, embed: int, repeats: int) -> dict:
    """Time and peak memory of rank 0's loss share (forward + backward), in this process."""
    import mindspore as ms
    import numpy as np
    import psutil

    from clip.loss.contrastive import full_loss, local_loss

    n = batch * world
    rng = np.random.RandomState(0)
    feats = rng.randn(2, n, embed).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    image_all, text_all = ms.Tensor(feats[0]), ms.Tensor(feats[1])
    image, text = ms.Tensor(feats[0][:batch]), ms.Tensor(feats[1][:batch])
    scale = ms.Tensor(1 / 0.07, ms.float32)

    if mode == "local":
        def share(image, text, image_all, text_all, scale):
            return local_loss(image, text, image_all, text_all, scale)
        args = (image, text, image_all, text_all, scale)
    else:
        def share(image, text, scale):
            return full_loss(image, text, scale)
        args = (image_all, text_all, scale) if mode == "full" else (image, text, scale)
    step = ms.jit(ms.value_and_grad(share, grad_position=tuple(range(len(args)))))

    rss_before = psutil.Process().memory_info().rss
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    loss, grads = step(*args)
    loss.asnumpy()
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        loss, grads = step(*args)
        loss.asnumpy()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": mode, "world_size": world, "per_rank_batch": batch, "global_batch": n,
            "logits_elements": logits_elements(mode, batch, world),
            "logits_mib": logits_elements(mode, batch, world) * 4 / 2 ** 20,
            "step_ms_median": 1000 * statistics.median(times), "step_ms_samples": [1000 * t for t in times],
            "first_call_s": first, "loss": float(loss.asnumpy()),
            "peak_rss_delta_mib": (peak - rss_before) / 2 ** 20,
            "peak_before_run_exceeded_rss": peak_before > rss_before}


def log_log_slope(xs, ys) -> float:
    """Least-squares exponent k in y ~ x^k (ignoring non-positive y)."""
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y > 0]
    mx = statistics.fmean(p[0] for p in pairs)
    my = statistics.fmean(p[1] for p in pairs)
    return sum((a - mx) * (b - my) for a, b in pairs) / sum((a - mx) ** 2 for a, _ in pairs)


def summarise(rows) -> dict:
    """Growth exponents vs the global batch N, per mode.

    Memory is taken above the `local_only` run of the same N: that run's B x B loss has a fixed size, so
    what it measures is the constant cost of the process, the compiled graph and the memory pool.
    """
    baseline = {r["global_batch"]: r["peak_rss_delta_mib"] for r in rows if r["mode"] == "local_only"}
    summary = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        big = [r for r in mine if r["global_batch"] >= 512]
        summary[mode] = {
            "logits_growth_exponent": log_log_slope([r["global_batch"] for r in mine],
                                                    [r["logits_elements"] for r in mine]),
            "step_time_growth_exponent_N>=512": log_log_slope([r["global_batch"] for r in big],
                                                              [r["step_ms_median"] for r in big]),
        }
        if mode != "local_only":
            summary[mode]["peak_memory_above_local_only_growth_exponent_N>=512"] = log_log_slope(
                [r["global_batch"] for r in big],
                [r["peak_rss_delta_mib"] - baseline[r["global_batch"]] for r in big])
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch B")
    parser.add_argument("--embed", type=int, default=512, help="embedding width (ViT-B/32: 512)")
    parser.add_argument("--max-world", type=int, default=64, help="largest simulated world size (powers of 2)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "WORLD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.batch, int(args.child[1]), args.embed, args.repeats)))
        return

    worlds = [2 ** k for k in range(int(math.log2(args.max_world)) + 1)]
    rows = []
    for world in worlds:
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(world), "--batch", str(args.batch),
                                  "--embed", str(args.embed), "--repeats", str(args.repeats)],
                                 check=True, capture_output=True, text=True, cwd=REPO,
                                 env={**os.environ, "GLOG_v": "3"})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{mode:>10} W={world:<3} N={row['global_batch']:<5} logits {row['logits_mib']:8.2f} MiB  "
                  f"peak +{row['peak_rss_delta_mib']:8.1f} MiB  step {row['step_ms_median']:9.2f} ms", flush=True)

    summary = summarise(rows)
    payload = {"what": "rank 0's share of the contrastive loss, forward+backward under ms.jit, simulated ranks",
               "per_rank_batch": args.batch, "embed_dim": args.embed, "repeats": args.repeats,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "load_average_at_end": os.getloadavg()},
               "summary": summary, "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(str(RESULTS), payload)
    print(json.dumps(summary, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
