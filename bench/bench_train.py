"""Train-step throughput (samples/s): our MindSpore train step on 1 and 2 ranks vs open_clip on torch.

    python bench/bench_train.py [--presets clip_tiny clip_vit_b_32] [--batch 16] [--out FILE]

The MindSpore step is exactly clip.train's (`TrainStep`: forward, contrastive loss, gradients, mean
all-reduce, AdamWeightDecay, logit_scale clamp, GRAPH_MODE). The anchor is open_clip 3.3.0 itself
(bench/openclip_anchor.py: QuickGELU, our preset's shapes, ClipLoss, torch.optim.AdamW plain and fused),
one process, timed with every core and with one thread (the faster counts), before and after the
MindSpore runs (the faster counts again: the conservative choice for our ratio). Ours runs on 1 rank at
batch B (against open_clip at B), on 1 rank at 2B and on 2 ranks x 1 core (launcher --bind-cores) at B
each: the last two have the same global batch and give the scaling efficiency. The 2-rank run is repeated with
the step's collectives on MindSpore's own CPU transport (`CLIP_SHM_COLLECTIVES=off`) instead of shared
memory (clip/shm_collectives.py), to show what that transport costs. open_clip's own scaling is
measured the same way in the same run: torch DistributedDataParallel (gloo, torchrun) on 2 ranks x 1 thread
pinned to one core each, with open_clip's sharded loss (--local-loss --gather-with-grad), against open_clip
in one process at 2B. Inputs are fixed random
tensors: the data pipeline is not measured. The first step (graph compilation) is reported separately
and excluded from the rate. Load averages are recorded with every measurement (the machine is shared).

    python bench/bench_train.py --profiles [--before 3cdb81d] [--rounds 2] --presets clip_tiny --batch 16

measures instead, on 1 rank, the device profiles (clip/profiles.py) side by side in one run: the native
profile (CPU's default), the same step of the code at commit `--before` (checked out into a temporary
`git worktree`, its own bench worker run from there), the stock profile (`CLIP_PROFILE=stock`, what Ascend
and GPU run), and open_clip with plain and fused AdamW. The MindSpore runs alternate for `--rounds`
rounds and the best of each counts; results go to bench/results/profiles_<preset>.json with the CPU model.

    python bench/bench_train.py --paired [--before 3cdb81d] [--pairs 16] --presets clip_vit_b_32 --batch 8

is the load-insensitive form of the native-vs-before comparison: separate runs see different loads on a
shared machine, so their ratio carries the load's drift. Here the native profile and the code at `--before`
each compile the step once in a live process (`--step-server`, the before tree's clip package on its
PYTHONPATH), then step in turn, one step each, in ABBA order, so the two steps of a pair see nearly the same
load. Reported: the median and quartiles of the per-pair ratios (before's step time over native's, so > 1
means native is faster), in wall time and in each process's CPU time, and how many pairs native won;
results go to bench/results/paired_<preset>.json.
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
from typing import Optional

import psutil

REPO = Path(__file__).resolve().parent.parent
STEPS = {"clip_tiny": 30, "clip_vit_b_32": 3}
RESULTS = REPO / "bench" / "results"
# The file of one preset's run, as the README cites it; several presets together go to train.json.
RESULT_FILES = {"clip_tiny": "train_tiny.json", "clip_vit_b_32": "train_vit_b_32.json"}


def default_out(presets) -> Path:
    return RESULTS / (RESULT_FILES.get(presets[0], "train.json") if len(presets) == 1 else "train.json")


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

    from clip.config import load_config
    from clip.loss.contrastive import ContrastiveLoss
    from clip.model import create_model
    from clip.parallel import distributed
    from clip.train import TrainStep
    from clip.train.optim import build_optimizer

    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    cfg = load_config(None, [f"model.name={args.preset}", f"train.batch_size={args.batch}", "train.lr=1e-4"])
    ms.set_seed(0)
    model = create_model(args.preset)
    t = cfg.train
    optimizer = build_optimizer(model, t.optimizer, t.weight_decay, t.beta1, t.beta2, t.eps)
    lr = ms.Tensor(np.float32(t.lr))
    step = TrainStep(model, ContrastiveLoss("local"), optimizer, distributed.grad_reducer(optimizer.parameters, info))
    images, tokens = fake_batch(model.config, args.batch, seed=info.rank)
    images, tokens = ms.Tensor(images), ms.Tensor(tokens)
    start = time.perf_counter()
    step(images, tokens, lr)[0].asnumpy()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        distributed.barrier()
        start = time.perf_counter()
        step(images, tokens, lr)[0].asnumpy()
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


def openclip_worker(args) -> None:
    """The anchor: open_clip's CLIP (QuickGELU, our preset's shapes) with its ClipLoss and torch.optim.AdamW,
    plain and fused, one process, timed with every core and with one thread (the faster counts)."""
    import torch
    sys.path.insert(0, str(REPO / "bench"))
    import openclip_anchor

    from clip.model.architectures import get_config

    config = get_config(args.preset)
    images, tokens = fake_batch(config, args.batch, seed=0)
    images, tokens = torch.from_numpy(images), torch.from_numpy(tokens).long()
    out = {"ranks": 1, "batch_per_rank": args.batch, "steps": args.steps, "torch": torch.__version__,
           "open_clip": openclip_anchor.import_open_clip().__version__}
    all_threads = torch.get_num_threads()
    for fused in (False, True):
        torch.manual_seed(0)
        torch.set_num_threads(all_threads)
        model = openclip_anchor.create(args.preset).train()
        step = openclip_anchor.train_step(model, openclip_anchor.optimizer(model, fused=fused))
        start = time.perf_counter()
        step(images, tokens)
        first = time.perf_counter() - start
        # torch's worker threads stall when another process holds a core; one thread does not: time both.
        per_threads = {}
        for threads in sorted({all_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step(images, tokens)
                times.append(time.perf_counter() - start)
            per_threads[threads] = statistics.median(times)
        threads, step_s = min(per_threads.items(), key=lambda item: item[1])
        out["fused" if fused else "plain"] = {
            "threads": threads, "first_step_s": round(first, 3), "step_s": round(step_s, 4),
            "step_s_by_threads": {str(k): round(v, 4) for k, v in per_threads.items()},
            "samples_per_s": round(args.batch / step_s, 2)}
        del model, step
    out["samples_per_s"] = out["plain"]["samples_per_s"]
    out["step_s"] = out["plain"]["step_s"]
    out["first_step_s"] = out["plain"]["first_step_s"]
    out["peak_rss_gb"] = round(peak_rss_gb(), 2)
    Path(args.result).write_text(json.dumps(out))


def openclip_ddp_worker(args) -> None:
    """One rank of open_clip under torch DistributedDataParallel (gloo), started by torchrun: one thread,
    pinned to one core as our launcher's --bind-cores pins a rank; plain torch.optim.AdamW, open_clip's
    sharded loss. The same scaling measurement as ours, for the reference."""
    import torch
    import torch.distributed as dist
    sys.path.insert(0, str(REPO / "bench"))
    import openclip_anchor

    from clip.model.architectures import get_config

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    psutil.Process().cpu_affinity([int(os.environ["LOCAL_RANK"]) % psutil.cpu_count()])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = openclip_anchor.create(args.preset).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    step = openclip_anchor.train_step(ddp, openclip_anchor.optimizer(model, fused=False), rank, world)
    images, tokens = fake_batch(get_config(args.preset), args.batch, seed=rank)
    images, tokens = torch.from_numpy(images), torch.from_numpy(tokens).long()
    start = time.perf_counter()
    step(images, tokens)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        dist.barrier()
        start = time.perf_counter()
        step(images, tokens)
        times.append(time.perf_counter() - start)
    summed = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(summed)
    if rank == 0:
        step_s = statistics.median((summed / world).tolist())
        Path(args.result).write_text(json.dumps({
            "ranks": world, "batch_per_rank": args.batch, "steps": args.steps, "threads_per_rank": 1,
            "first_step_s": round(first, 3), "step_s": round(step_s, 4),
            "samples_per_s": round(world * args.batch / step_s, 2), "peak_rss_gb_rank0": round(peak_rss_gb(), 2)}))
    dist.destroy_process_group()


def run(cmd, timeout: float, extra_env: Optional[dict] = None, cwd: Path = REPO) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_", "DEVICE_", "CLIP_PROFILE"))}
    env["GLOG_v"] = "3"
    env.update(extra_env or {})
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def measure(preset: str, batch: int, steps: int, kind: str, ranks: int, workdir: Path,
            bind_cores: bool = False, extra_env: Optional[dict] = None, code: Path = REPO, label: str = "") -> dict:
    """One measurement in a fresh process; `code` is the source tree whose bench worker and clip package run."""
    label = label or ("mindspore_collectives" if extra_env else "")
    result = workdir / f"{preset}_{kind}_{ranks}_{batch}{'_' + label if label else ''}.json"
    if code != REPO:
        extra_env = {**(extra_env or {}), "PYTHONPATH": str(code)}
    worker = [sys.executable, str(code / "bench" / "bench_train.py"), f"--{kind}-worker", "--preset", preset,
              "--batch", str(batch), "--steps", str(steps), "--result", str(result)]
    if kind == "openclip-ddp":
        worker = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] + \
                 worker[1:]
    elif ranks > 1:
        worker = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(ranks),
                  "--log-dir", str(workdir / f"logs_{preset}_{ranks}"), "--no-chdir"] + \
                 (["--bind-cores"] if bind_cores else []) + ["--"] + worker
    start = time.perf_counter()
    run(worker, timeout=3600, extra_env=extra_env, cwd=code)
    out = json.loads(result.read_text())
    out["wall_s"] = round(time.perf_counter() - start, 1)
    out["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    extra = f", fused {out['fused']['samples_per_s']:.2f}" if "fused" in out else ""
    print(f"{preset:14s} {kind:10s} ranks={ranks} batch={batch}{' (' + label + ')' if label else ''}: {out['samples_per_s']:8.2f} samples/s{extra} "
          f"(step {out['step_s']:.3f} s, first step {out['first_step_s']:.1f} s, load {out['load_avg'][0]})",
          flush=True)
    return out


def compare(preset: str, batch: int, steps: int, workdir: Path) -> dict:
    """open_clip before and after ours (the faster run counts), ours on 1 rank at batch B and 2B, and on
    2 ranks x 1 core at batch B each (same global batch as 1 rank x 2 cores at 2B: scaling efficiency)."""
    before = measure(preset, batch, steps, "openclip", 1, workdir)
    ours = measure(preset, batch, steps, "mindspore", 1, workdir)
    ours_2b = measure(preset, 2 * batch, steps, "mindspore", 1, workdir)
    ours_2 = measure(preset, batch, steps, "mindspore", 2, workdir, bind_cores=True)
    # the same 2 ranks with the step's collectives on MindSpore's own CPU transport (loopback TCP), not shared memory
    ours_2_ms = measure(preset, batch, steps, "mindspore", 2, workdir, bind_cores=True,
                         extra_env={"CLIP_SHM_COLLECTIVES": "off"})
    after = measure(preset, batch, steps, "openclip", 1, workdir)
    # open_clip's own data-parallel scaling, measured the same way: DDP 2 ranks x 1 core against 1 process at 2B
    theirs_2b = measure(preset, 2 * batch, steps, "openclip", 1, workdir)
    theirs_2 = measure(preset, batch, steps, "openclip-ddp", 2, workdir)
    anchor = max(before, after, key=lambda r: r["samples_per_s"])
    fused = max(before["fused"]["samples_per_s"], after["fused"]["samples_per_s"])
    return {
        "mindspore_1_rank": ours, "mindspore_1_rank_global_batch": ours_2b, "mindspore_2_ranks_1_core_each": ours_2,
        "open_clip_runs_samples_per_s": {"plain": [before["samples_per_s"], after["samples_per_s"]],
                                         "fused": [before["fused"]["samples_per_s"], after["fused"]["samples_per_s"]]},
        "open_clip": anchor,
        "ratio_vs_open_clip_adamw": round(ours["samples_per_s"] / anchor["samples_per_s"], 3),
        "ratio_vs_open_clip_fused_adamw": round(ours["samples_per_s"] / fused, 3),
        "scaling_efficiency_2_ranks": round(ours_2["samples_per_s"] / ours_2b["samples_per_s"], 3),
        "mindspore_2_ranks_1_core_each_mindspore_collectives": ours_2_ms,
        "scaling_efficiency_2_ranks_mindspore_collectives": round(ours_2_ms["samples_per_s"] / ours_2b["samples_per_s"], 3),
        "ratio_2_ranks_vs_open_clip_adamw": round(ours_2["samples_per_s"] / anchor["samples_per_s"], 3),
        "open_clip_1_rank_global_batch": theirs_2b, "open_clip_ddp_2_ranks_1_core_each": theirs_2,
        "open_clip_scaling_efficiency_2_ranks": round(theirs_2["samples_per_s"] / theirs_2b["samples_per_s"], 3),
        "ratio_2_ranks_vs_open_clip_ddp": round(ours_2["samples_per_s"] / theirs_2["samples_per_s"], 3),
    }


def build_step(preset: str, batch: int):
    """The bench's 1-rank step and its inputs from the clip package on sys.path: this tree's, or, for
    `--paired`, the flat layout of the code before the device profiles (commit 3cdb81d)."""
    import mindspore as ms
    import numpy as np

    from clip.config import load_config
    from clip.loss import ContrastiveLoss
    from clip.model import create_model
    from clip.train import TrainStep
    try:
        from clip.parallel import distributed
        from clip.train.optim import build_optimizer
    except ImportError:
        from clip import distributed
        from clip.optim import build_optimizer

    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    cfg = load_config(None, [f"model.name={preset}", f"train.batch_size={batch}", "train.lr=1e-4"])
    ms.set_seed(0)
    model = create_model(preset)
    t = cfg.train
    optimizer = build_optimizer(model, t.optimizer, t.weight_decay, t.beta1, t.beta2, t.eps)
    step = TrainStep(model, ContrastiveLoss("local"), optimizer, distributed.grad_reducer(optimizer.parameters, info))
    images, tokens = fake_batch(model.config, batch, seed=0)
    return step, (ms.Tensor(images), ms.Tensor(tokens), ms.Tensor(np.float32(t.lr)))


REPLY = "step-server "  # prefix of the server's replies on stdout (MindSpore may print there too)


def step_server(args) -> None:
    """Compile the step, then run one step per `step` line on stdin; each reply is one JSON line with the
    step's wall time and this process's CPU time (all threads) over it."""
    step, inputs = build_step(args.preset, args.batch)
    start = time.perf_counter()
    step(*inputs)[0].asnumpy()
    print(REPLY + json.dumps({"compile_s": round(time.perf_counter() - start, 2)}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        wall, cpu = time.perf_counter(), time.process_time()
        step(*inputs)[0].asnumpy()
        print(REPLY + json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}),
              flush=True)


class StepServer:
    """A live `--step-server` process running the code of `code` (this tree or a worktree)."""

    def __init__(self, preset: str, batch: int, code: Path, extra_env: dict):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_", "DEVICE_", "CLIP_PROFILE"))}
        env.update({"GLOG_v": "3", **extra_env})
        if code != REPO:
            env["PYTHONPATH"] = str(code)
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "bench_train.py"), "--step-server", "--preset", preset,
             "--batch", str(batch)], cwd=code, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)

    def reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        raise RuntimeError(f"step server exited with {self.proc.wait()}")

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # interrupted in the middle of a long step
                self.proc.kill()
                self.proc.wait()


def quartiles(values: list) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median": round(statistics.median(values), 3), "q1": round(q[0], 3), "q3": round(q[2], 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def compare_paired(preset: str, batch: int, pairs: int, workdir: Path, before: str) -> dict:
    """Native profile vs the code at `before`, stepping in turn (ABBA) in two live processes."""
    tree = workdir / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), before], cwd=REPO, check=True,
                   capture_output=True, text=True)
    servers = {}
    try:
        servers = {"native": StepServer(preset, batch, REPO, {"CLIP_PROFILE": "native"}),
                   "before": StepServer(preset, batch, tree, {})}
        compile_s = {name: server.reply()["compile_s"] for name, server in servers.items()}
        for server in servers.values():  # one untimed step each: first-run allocations
            server.step()
        steps: dict = {"native": [], "before": []}
        loads = []
        for i in range(pairs):
            for name in (("native", "before") if i % 2 == 0 else ("before", "native")):
                steps[name].append(servers[name].step())
            loads.append(round(os.getloadavg()[0], 2))
            print(f"pair {i}: native {steps['native'][-1]['wall_s']:.3f} s, before {steps['before'][-1]['wall_s']:.3f} s "
                  f"(load {loads[-1]})", flush=True)
    finally:
        for server in servers.values():
            server.close()
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    out = {"before_commit": before, "batch": batch, "pairs": pairs, "compile_s": compile_s, "load_avg_1min": loads,
           "step_s": {name: [round(s["wall_s"], 4) for s in runs] for name, runs in steps.items()},
           "cpu_s": {name: [round(s["cpu_s"], 4) for s in runs] for name, runs in steps.items()}}
    for kind in ("wall_s", "cpu_s"):
        ratios = [b[kind] / n[kind] for n, b in zip(steps["native"], steps["before"])]
        out[f"ratio_native_vs_before_{kind[:-2]}"] = quartiles(ratios)
        out[f"native_faster_pairs_{kind[:-2]}"] = sum(r > 1 for r in ratios)
        for name, runs in steps.items():
            out[f"median_{kind}_{name}"] = round(statistics.median(s[kind] for s in runs), 4)
    out["samples_per_s_median"] = {name: round(batch / out[f"median_wall_s_{name}"], 2) for name in steps}
    wall = out["ratio_native_vs_before_wall"]
    print(f"{preset}: native/before (speed, per pair) median {wall['median']} [q1 {wall['q1']}, q3 {wall['q3']}], "
          f"native faster in {out['native_faster_pairs_wall']}/{pairs}; CPU time median "
          f"{out['ratio_native_vs_before_cpu']['median']}", flush=True)
    return out


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (ratios differ a lot between hosts), else what platform knows."""
    import platform

    path = Path("/proc/cpuinfo")
    lines = path.read_text().splitlines() if path.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def compare_profiles(preset: str, batch: int, steps: int, workdir: Path, before: str, rounds: int) -> dict:
    """The native profile, the code at commit `before` and the stock profile, `rounds` times in turn (the best
    of each counts), between two open_clip runs (the faster counts); ratios of each to open_clip."""
    tree = workdir / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), before], cwd=REPO, check=True,
                   capture_output=True, text=True)
    try:
        anchor_runs = [measure(preset, batch, steps, "openclip", 1, workdir, label="first")]
        runs: dict = {"native": [], "before": [], "stock": []}
        for r in range(rounds):
            runs["before"].append(measure(preset, batch, steps, "mindspore", 1, workdir, code=tree,
                                          label=f"before_{r}"))
            runs["native"].append(measure(preset, batch, steps, "mindspore", 1, workdir,
                                          extra_env={"CLIP_PROFILE": "native"}, label=f"native_{r}"))
            runs["stock"].append(measure(preset, batch, steps, "mindspore", 1, workdir,
                                         extra_env={"CLIP_PROFILE": "stock"}, label=f"stock_{r}"))
        anchor_runs.append(measure(preset, batch, steps, "openclip", 1, workdir, label="last"))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    plain = max(run["samples_per_s"] for run in anchor_runs)
    fused = max(run["fused"]["samples_per_s"] for run in anchor_runs)
    best = {name: max(rs, key=lambda run: run["samples_per_s"]) for name, rs in runs.items()}
    out = {"before_commit": before, "batch": batch, "steps": steps, "rounds": rounds,
           "samples_per_s": {name: [run["samples_per_s"] for run in rs] for name, rs in runs.items()},
           "open_clip_samples_per_s": {"plain": [run["samples_per_s"] for run in anchor_runs],
                                       "fused": [run["fused"]["samples_per_s"] for run in anchor_runs]},
           "best": best, "open_clip": anchor_runs,
           "ratio_native_vs_before": round(best["native"]["samples_per_s"] / best["before"]["samples_per_s"], 3),
           "ratio_stock_vs_native": round(best["stock"]["samples_per_s"] / best["native"]["samples_per_s"], 3)}
    for name in runs:
        out[f"ratio_{name}_vs_open_clip_adamw"] = round(best[name]["samples_per_s"] / plain, 3)
        out[f"ratio_{name}_vs_open_clip_fused_adamw"] = round(best[name]["samples_per_s"] / fused, 3)
    print(f"{preset}: native/before {out['ratio_native_vs_before']}, stock/native {out['ratio_stock_vs_native']}, "
          + ", ".join(f"{name} vs open_clip {out[f'ratio_{name}_vs_open_clip_adamw']} (fused "
                      f"{out[f'ratio_{name}_vs_open_clip_fused_adamw']})" for name in runs), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(STEPS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default per preset)")
    parser.add_argument("--out", default=None, help="default: bench/results/train_<preset>.json for one preset, "
                                                    "else train.json")
    parser.add_argument("--profiles", action="store_true", help="native vs stock profile vs the code at --before")
    parser.add_argument("--before", default="3cdb81d", help="the commit the native profile is compared with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--paired", action="store_true", help="native vs the code at --before, stepping in turn")
    parser.add_argument("--pairs", type=int, default=16, help="step pairs of --paired")
    parser.add_argument("--step-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mindspore-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--openclip-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--openclip-ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mindspore_worker:
        mindspore_worker(args)
        return 0
    if args.step_server:
        step_server(args)
        return 0
    if args.openclip_worker:
        openclip_worker(args)
        return 0
    if args.openclip_ddp_worker:
        openclip_ddp_worker(args)
        return 0

    if args.profiles or args.paired:
        return profiles_main(args)
    results = {"machine": {"cpus": psutil.cpu_count(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
                           "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1)},
               "batch_per_rank": args.batch, "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            results["presets"][preset] = compare(preset, args.batch, args.steps or STEPS.get(preset, 5), Path(tmp))
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out) if args.out else default_out(args.presets)
    out.parent.mkdir(parents=True, exist_ok=True)
    from launcher.safe_write import write_json
    write_json(str(out), results, indent=2)
    print(f"wrote {out}")
    return 0


def profiles_main(args) -> int:
    results = {"machine": {"cpu_model": cpu_model(), "cpus": psutil.cpu_count(),
                           "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
                           "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1)},
               "command": " ".join(["python", "bench/bench_train.py"] + sys.argv[1:]), "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            if args.paired:
                results["presets"][preset] = compare_paired(preset, args.batch, args.pairs, Path(tmp), args.before)
            else:
                results["presets"][preset] = compare_profiles(preset, args.batch, args.steps or STEPS.get(preset, 5),
                                                              Path(tmp), args.before, args.rounds)
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    kind = "paired" if args.paired else "profiles"
    name = RESULT_FILES.get(args.presets[0], "train.json").replace("train", kind) \
        if len(args.presets) == 1 else f"{kind}.json"
    out = Path(args.out) if args.out else RESULTS / name
    from launcher.safe_write import write_json
    write_json(str(out), results, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
