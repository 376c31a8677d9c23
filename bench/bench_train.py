"""Train-step throughput (samples/s): our MindSpore train step on 1 and 2 ranks vs the torch reference.

    python bench/bench_train.py [--presets clip_tiny clip_vit_b_32] [--batch 16] [--out bench/results/train.json]

The MindSpore step is exactly clip.train's (`TrainStep`: forward, contrastive loss, gradients, mean
all-reduce, AdamWeightDecay, logit_scale clamp, GRAPH_MODE); 2 ranks run as a real CPU dynamic cluster
through the launcher, each with `--batch` samples (global batch 2 x batch). The torch reference is
tests/torch_reference.py (OpenAI's architecture in plain torch) with torch.optim.AdamW and the same loss,
one process, timed with every core and with one thread (the faster counts), before and after the
MindSpore runs (the faster counts again). Inputs are fixed random tensors: the data pipeline is not
measured. The first MindSpore step (graph compilation) is reported separately and excluded from the rate.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
STEPS = {"clip_tiny": 30, "clip_vit_b_32": 3}


def peak_rss_gb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def fake_batch(config, batch: int, seed: int):
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, config.image_size, config.image_size)).astype(np.float32)
    tokens = rng.integers(1, 49405, (batch, config.context_length)).astype(np.int32)
    ends = rng.integers(5, config.context_length, batch)
    tokens[np.arange(batch), ends] = 49407
    for i, e in enumerate(ends):
        tokens[i, e + 1:] = 0
    tokens[:, 0] = 49406
    return images, tokens


def mindspore_worker(args) -> None:
    """One rank of the MindSpore measurement; rank 0 writes the result file."""
    import mindspore as ms
    import numpy as np

    from clip import distributed
    from clip.config import load_config
    from clip.loss import ContrastiveLoss
    from clip.model import create_model
    from clip.train import TrainStep, build_optimizer

    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    cfg = load_config(None, [f"model.name={args.preset}", f"train.batch_size={args.batch}", "train.lr=1e-4"])
    ms.set_seed(0)
    model = create_model(args.preset)
    optimizer, _ = build_optimizer(model, cfg, args.steps + 1)
    step = TrainStep(model, ContrastiveLoss("local"), optimizer, distributed.grad_reducer(optimizer.parameters, info))
    images, tokens = fake_batch(model.config, args.batch, seed=info.rank)
    images, tokens = ms.Tensor(images), ms.Tensor(tokens)
    start = time.perf_counter()
    step(images, tokens).asnumpy()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        distributed.barrier()
        start = time.perf_counter()
        step(images, tokens).asnumpy()
        times.append(time.perf_counter() - start)
    # Ranks wait for each other in the gradient all-reduce, so their step times agree; average them.
    times = distributed.all_reduce_sum(np.array(times, np.float64)) / info.world_size
    if info.rank == 0:
        step_s = statistics.median(times.tolist())
        result = {"ranks": info.world_size, "batch_per_rank": args.batch, "steps": args.steps,
                  "first_step_s": round(compile_s, 3), "step_s": round(step_s, 4),
                  "samples_per_s": round(info.world_size * args.batch / step_s, 2),
                  "peak_rss_gb_rank0": round(peak_rss_gb(), 2)}
        Path(args.result).write_text(json.dumps(result))


def torch_worker(args) -> None:
    """The torch reference: same architecture, AdamW, CLIP loss, one process (all cores or one thread)."""
    import torch
    sys.path.insert(0, str(REPO / "tests"))
    from torch_reference import Shapes, build, random_state_dict

    from clip.presets import get_config

    torch.manual_seed(0)
    config = get_config(args.preset)
    shapes = Shapes.of(config)
    model = build(random_state_dict(shapes)).train()
    for p in model.parameters():
        p.requires_grad_(True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    images, tokens = fake_batch(config, args.batch, seed=0)
    images, tokens = torch.from_numpy(images), torch.from_numpy(tokens).long()
    labels = torch.arange(args.batch)

    def one_step():
        logits, logits_t = model(images, tokens)
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, labels) +
                      torch.nn.functional.cross_entropy(logits_t, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)

    start = time.perf_counter()
    one_step()
    first = time.perf_counter() - start
    # torch's worker threads stall when another process holds a core; one thread does not: time both.
    per_threads = {}
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            one_step()
            times.append(time.perf_counter() - start)
        per_threads[threads] = statistics.median(times)
    threads, step_s = min(per_threads.items(), key=lambda item: item[1])
    Path(args.result).write_text(json.dumps({
        "ranks": 1, "threads": threads, "batch_per_rank": args.batch, "steps": args.steps,
        "first_step_s": round(first, 3), "step_s": round(step_s, 4),
        "step_s_by_threads": {str(k): round(v, 4) for k, v in per_threads.items()},
        "samples_per_s": round(args.batch / step_s, 2), "peak_rss_gb": round(peak_rss_gb(), 2),
        "torch": torch.__version__}))


def run(cmd, timeout: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_", "DEVICE_"))}
    env["GLOG_v"] = "3"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def measure(preset: str, batch: int, steps: int, kind: str, ranks: int, workdir: Path) -> dict:
    result = workdir / f"{preset}_{kind}_{ranks}.json"
    worker = [sys.executable, str(Path(__file__).resolve()), f"--{kind}-worker", "--preset", preset,
              "--batch", str(batch), "--steps", str(steps), "--result", str(result)]
    if ranks > 1:
        worker = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(ranks),
                  "--log-dir", str(workdir / f"logs_{preset}_{ranks}"), "--no-chdir", "--"] + worker
    start = time.perf_counter()
    run(worker, timeout=3600)
    out = json.loads(result.read_text())
    out["wall_s"] = round(time.perf_counter() - start, 1)
    print(f"{preset:14s} {kind:9s} ranks={ranks}: {out['samples_per_s']:8.2f} samples/s "
          f"(step {out['step_s']:.3f} s, first step {out['first_step_s']:.1f} s)", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(STEPS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default per preset)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "train.json"))
    parser.add_argument("--mindspore-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mindspore_worker:
        mindspore_worker(args)
        return 0
    if args.torch_worker:
        torch_worker(args)
        return 0

    results = {"machine": {"cpus": psutil.cpu_count(), "load_avg_at_start": os.getloadavg(),
                           "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1)},
               "batch_per_rank": args.batch, "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            steps = args.steps or STEPS.get(preset, 5)
            # This machine is shared and torch's threads suffer most from it: torch runs before and after
            # MindSpore and the faster of the two is the reference (the conservative choice for our ratio).
            before = measure(preset, args.batch, steps, "torch", 1, Path(tmp))
            entry = {f"mindspore_{ranks}_rank": measure(preset, args.batch, steps, "mindspore", ranks, Path(tmp))
                     for ranks in (1, 2)}
            after = measure(preset, args.batch, steps, "torch", 1, Path(tmp))
            entry["torch_runs_samples_per_s"] = [before["samples_per_s"], after["samples_per_s"]]
            entry["torch_reference"] = max(before, after, key=lambda r: r["samples_per_s"])
            ref = entry["torch_reference"]["samples_per_s"]
            entry["ratio_1_rank_vs_torch"] = round(entry["mindspore_1_rank"]["samples_per_s"] / ref, 3)
            entry["ratio_2_ranks_vs_torch"] = round(entry["mindspore_2_rank"]["samples_per_s"] / ref, 3)
            results["presets"][preset] = entry
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
