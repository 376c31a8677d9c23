"""Peak memory and step time of a ViT-B/32 train step: plain, with recompute, and with contrastive accumulation.

    flock /tmp/heavy.lock python bench/bench_memory.py [--batches 16 32 64] [--accum 4] [--steps 3] [--grad-clip-norm X]
                                                       [--limit-gib 16] [--no-verify] [--quick]
                                                       [--train-mode graph|pynative] [--out FILE]
                                                       [--locks image image_text [--model NAME]]

Every configuration runs in a fresh process (so peaks do not mix) that builds the step exactly as
clip.train does (create_model, recompute_blocks, build_optimizer, ContrastiveLoss, build_train_step:
TrainStep or AccumulatingTrainStep; fp32, GRAPH_MODE, 1 process, CPU, fixed random inputs), records its
RSS after the model and step are built, runs the first step (graph compilation) and `--steps` timed steps,
and reports its peak RSS (`ru_maxrss`, nothing subtracted), the peak of MindSpore's own memory pool (the
activations, gradients and workspaces of the step: `MS_DEV_RUNTIME_CONF=memory_statistics:True`, printed
by the runtime at exit), the state the step holds between steps (weights, AdamW moments, the gradient sum
when accumulating), the card total (state + pool peak: what a card's memory must hold) and the median step
time. Configurations:
plain and `model.recompute: true` at each per-card batch, and `train.accum_steps: K` micro-batches of the
smallest batch. Step-time ratios compare equal global batches (recompute B vs plain B; K x B accumulated
vs plain K*B). Then peak = a + b * batch is fitted for plain and recompute, the largest batch under
`--limit-gib` is predicted, and one step at that batch is run to check the prediction. Targets (issue 11):
recompute cuts the peak by >= 40% at batch 64; K = 4 at batch 16 peaks within 10% of plain batch 16; both
are judged on the RSS, on the pool and on the card total. On the CPU backend the RSS also holds what a card's memory does not:
the compiled graph's IR (~1.6 GiB for this step) and buffers that CPU kernels (Transpose) keep outside the
pool; the pool is what the step itself allocates through MindSpore, which on a card is device memory.
`--train-mode pynative` measures the same step uncompiled (results in memory_pynative.json): on the
CPU backend the compiled step's RSS also holds its IR and memory CPU kernels keep outside the pool.
`--big` measures ViT-H-14 and ViT-bigG-14 at 1-2 blocks per tower and batches 4 and 8, fits each tower's per-block
and per-sample cost and extrapolates linearly to the full depth (`big`, bench/results/memory_big.json; the
per-card table in docs/training.md).
`--locks image image_text` measures, instead, the plain step at each batch with towers locked beside the
unlocked one (LiT: `model.lock_image`; both towers locked but their projections), each in its fresh process;
`state` then counts the locked weights too (held, but without moments) (bench/results/memory_lock.json).
`--quick` is a small smoke run of the same ViT-B/32 step (batches 4 8, K = 2, 1 timed step, no
verification) written to bench/results/memory_quick.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_train import fake_batch  # noqa: E402

from launcher.safe_write import write_json  # noqa: E402

PRESET = "clip_vit_b_32"
GIB = 2 ** 30
# --locks: LiT (the image tower locked) and both towers locked but their projections (bench_phases.py has the same)
LOCKS = {"none": {}, "image": {"lock_image": True, "image_unlocked": 0},
         "image_text": {"lock_image": True, "image_unlocked": 1, "lock_text": True, "text_unlocked": 1}}
# Left free beside a verification run: the machine is shared, and running out of memory kills the job.
HEADROOM_GIB = 1.0


# ---------------------------------------------------------------- pure arithmetic

def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b * x; needs at least two distinct x."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        raise ValueError(f"a line needs at least two distinct x values, got {list(xs)}")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def largest_batch(a: float, b: float, limit: float) -> int:
    """The largest integer batch with a + b * batch <= limit (0 if not even one sample fits)."""
    if b <= 0:
        raise ValueError(f"memory per sample must be positive, got {b}")
    return max(0, math.floor((limit - a) / b))


POOL_PEAK = re.compile(r"dynamic memory pool total allocated mem:\d+M.*?, peak used mem:(\d+)M")


def pool_peak_gib(runtime_output: str) -> Optional[float]:
    """The peak in use of MindSpore's memory pool from the runtime's exit statistics (the largest, if several
    pools report), or None if the runtime printed none."""
    peaks = [int(m) for m in POOL_PEAK.findall(runtime_output)]
    return round(max(peaks) / 1024, 3) if peaks else None


def reduction(value: float, baseline: float) -> float:
    """How much smaller `value` is than `baseline`, as a fraction of the baseline (0.4 = 40% less)."""
    return 1.0 - value / baseline


# ---------------------------------------------------------------- one measurement (worker process)

def rss_gib() -> float:
    return psutil.Process().memory_info().rss / GIB


def peak_rss_gib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: kilobytes


def worker(args) -> None:
    """Build clip.train's step for one configuration, then the first step and `steps` timed steps."""
    import mindspore as ms
    import numpy as np

    from clip.config import load_config
    from clip.loss.contrastive import ContrastiveLoss
    from clip.model import create_model
    from clip.model.architectures import get_config
    from clip.model.groups import lock_towers
    from clip.parallel import distributed
    from clip.train import build_train_step
    from clip.train.precision import MODEL_DTYPE
    from clip.train.optim import build_optimizer
    from clip.train.recompute import recompute_blocks

    ms.set_context(mode=ms.GRAPH_MODE if args.train_mode == "graph" else ms.PYNATIVE_MODE)
    info = distributed.init_from_env()
    cfg = load_config(None, [f"model.name={args.model}", f"train.batch_size={args.batch}", "train.lr=1e-4", f"train.mode={args.train_mode}",
                             f"train.accum_steps={args.accum}", f"model.recompute={str(args.recompute).lower()}",
                             f"train.grad_clip_norm={args.grad_clip_norm}", f"train.precision={args.precision}"])
    t = cfg.train
    ms.set_seed(0)
    architecture = get_config(args.model)
    if args.layers:  # reduced depth (--big): vision and text blocks
        architecture = replace(architecture, vision_layers=args.layers[0], text_layers=args.layers[1])
    model = create_model(architecture, dtype=MODEL_DTYPE[args.precision])
    marked = recompute_blocks(model, cfg.model.recompute)
    lock_towers(model, **LOCKS[args.lock])
    optimizer = build_optimizer(model, t.optimizer, t.weight_decay, t.beta1, t.beta2, t.eps)
    step = build_train_step(t, model, ContrastiveLoss(cfg.loss.mode), optimizer,
                            distributed.grad_reducer(optimizer.parameters, info))
    images, tokens = (ms.Tensor(x) for x in fake_batch(model.config, args.batch * args.accum, seed=0))
    lr = ms.Tensor(np.float32(t.lr))
    # what the step keeps between steps: weights, AdamW moments and, when accumulating, the gradient sum
    held = {p.name: p for p in optimizer.get_parameters()}
    held.update((p.name, p) for p in model.get_parameters())  # locked weights are held too
    held.update((p.name, p) for p in getattr(step, "sum", ()))
    state = sum(p.nbytes for p in held.values()) / GIB
    after_build = rss_gib()
    start = time.perf_counter()
    step(images, tokens, lr)[0].asnumpy()
    first = time.perf_counter() - start
    after_first = peak_rss_gib()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(images, tokens, lr)[0].asnumpy()
        times.append(time.perf_counter() - start)
    peak = peak_rss_gib()
    Path(args.result).write_text(json.dumps({
        "model": args.model, "layers_per_tower": model.config.vision_layers, "precision": args.precision,
        "parameters": sum(p.size for p in model.get_parameters()), "batch": args.batch, "accum_steps": args.accum, "global_batch": args.batch * args.accum,
        "recompute": args.recompute, "recomputed_blocks": marked, "lock": args.lock,
        "trainable_parameters": sum(p.size for p in optimizer.parameters), "steps": args.steps, "state_gib": round(state, 3),
        "rss_after_build_gib": round(after_build, 3), "peak_rss_after_first_step_gib": round(after_first, 3),
        "peak_rss_gib": round(peak, 3), "step_increment_gib": round(peak - after_build, 3),
        "first_step_s": round(first, 2), "step_s": round(statistics.median(times), 3) if times else None,
        "step_times_s": [round(x, 3) for x in times]}))


# ---------------------------------------------------------------- orchestration

def measure(batch: int, steps: int, workdir: Path, recompute: bool = False, accum: int = 1,
            train_mode: str = "graph", grad_clip_norm: float = 0.0, model: str = PRESET, layers: tuple = (),
            precision: str = "fp32", lock: str = "none") -> dict:
    """One configuration in a fresh process; its result plus the load average."""
    name = f"{'recompute' if recompute else 'plain'}_{batch}" + (f"_x{accum}" if accum > 1 else "") + (
        f"_lock_{lock}" if lock != "none" else "")
    if layers:
        name = f"{model}_{precision}_v{layers[0]}_t{layers[1]}_{name}"
    result = workdir / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--batch", str(batch), "--accum", str(accum),
           "--steps", str(steps), "--train-mode", train_mode, "--result", str(result),
           "--grad-clip-norm", str(grad_clip_norm), "--model", model, "--precision", precision, "--lock", lock] + \
        (["--layers", *[str(n) for n in layers]] if layers else []) + (["--recompute"] if recompute else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_", "DEVICE_"))}
    env.update(GLOG_v="3", MS_DEV_RUNTIME_CONF="memory_statistics:True")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(result.read_text())
    out["pool_peak_gib"] = pool_peak_gib(proc.stdout + proc.stderr)
    if out["pool_peak_gib"] is not None:
        out["card_total_gib"] = round(out["state_gib"] + out["pool_peak_gib"], 3)
    out["wall_s"] = round(time.perf_counter() - start, 1)
    out["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    step = f"{out['step_s']:.2f} s/step" if out["step_s"] is not None else "no timed step"
    print(f"{name:16s} peak RSS {out['peak_rss_gib']:6.2f} GiB (after build {out['rss_after_build_gib']:.2f}), "
          f"pool peak {out['pool_peak_gib']} GiB (+ state {out['state_gib']} GiB = card {out.get('card_total_gib')}), "
          f"{step}, first step {out['first_step_s']:.1f} s, load {out['load_avg'][0]}", flush=True)
    return out


def summarise(runs: dict, batches: Sequence[int], accum: int) -> dict:
    """Ratios against plain at the same batch / global batch and the two targets of issue 11, on the peak RSS
    and on MindSpore's pool peak."""
    small, large = min(batches), max(batches)
    table = []
    for name, r in runs.items():
        plain = runs.get(f"plain_{r['global_batch']}")
        row = {"config": name, "batch": r["batch"], "accum_steps": r["accum_steps"], "recompute": r["recompute"],
               "global_batch": r["global_batch"], "peak_rss_gib": r["peak_rss_gib"],
               "pool_peak_gib": r.get("pool_peak_gib"), "state_gib": r.get("state_gib"),
               "card_total_gib": r.get("card_total_gib"), "rss_after_build_gib": r["rss_after_build_gib"],
               "step_increment_gib": r["step_increment_gib"], "step_s": r["step_s"], "first_step_s": r["first_step_s"]}
        if plain and plain is not r:
            row["step_time_vs_plain_same_global_batch"] = round(r["step_s"] / plain["step_s"], 3)
            row["peak_vs_plain_same_global_batch"] = round(r["peak_rss_gib"] / plain["peak_rss_gib"], 3)
        table.append(row)
    targets = {}
    for measure_, what in (("peak_rss_gib", "rss"), ("pool_peak_gib", "pool"), ("card_total_gib", "card_total")):
        rec, plain_large = runs.get(f"recompute_{large}"), runs.get(f"plain_{large}")
        if rec and plain_large and rec.get(measure_) and plain_large.get(measure_):
            cut = reduction(rec[measure_], plain_large[measure_])
            targets[f"recompute_{what}_cut"] = {"batch": large, "cut": round(cut, 3), "target": 0.40, "met": cut >= 0.40}
        acc, plain_small = runs.get(f"plain_{small}_x{accum}"), runs.get(f"plain_{small}")
        if acc and plain_small and acc.get(measure_) and plain_small.get(measure_):
            over = acc[measure_] / plain_small[measure_] - 1.0
            targets[f"accumulation_{what}_peak"] = {"batch": small, "accum_steps": accum, "over_plain": round(over, 3),
                                                   "target": 0.10, "met": over <= 0.10}
    if "recompute_rss_cut" in targets:
        targets["recompute_rss_cut"]["cut_of_step_increment"] = round(reduction(
            runs[f"recompute_{large}"]["step_increment_gib"], runs[f"plain_{large}"]["step_increment_gib"]), 3)
    return {"table": table, "targets": targets}


def fit_and_predict(runs: dict, batches: Sequence[int], limit_gib: float) -> dict:
    """Per mode: peak = a + b * batch over the measured batches, and the largest batch under the limit."""
    fits = {}
    for mode in ("plain", "recompute"):
        points = [(b, runs[f"{mode}_{b}"]["peak_rss_gib"]) for b in batches if f"{mode}_{b}" in runs]
        if len({b for b, _ in points}) < 2:
            continue
        a, b = fit_line([p[0] for p in points], [p[1] for p in points])
        fits[mode] = {"a_gib": round(a, 3), "b_gib_per_sample": round(b, 4), "b_mib_per_sample": round(b * 1024, 1),
                      "limit_gib": limit_gib, "largest_batch": largest_batch(a, b, limit_gib)}
    return fits


def verify(fit: dict, mode: str, workdir: Path, train_mode: str) -> dict:
    """One step at the predicted largest batch, if the machine has the memory free right now."""
    batch = fit["largest_batch"]
    free = psutil.virtual_memory().available / GIB
    if free < fit["limit_gib"] + HEADROOM_GIB:
        return {"batch": batch, "skipped": f"only {free:.1f} GiB available, {fit['limit_gib'] + HEADROOM_GIB} needed"}
    out = measure(batch, 0, workdir, recompute=mode == "recompute", train_mode=train_mode)
    return {"batch": batch, "peak_rss_gib": out["peak_rss_gib"], "rss_after_build_gib": out["rss_after_build_gib"],
            "first_step_s": out["first_step_s"], "predicted_gib": round(fit["a_gib"] + fit["b_gib_per_sample"] * batch, 3),
            "fits": out["peak_rss_gib"] <= fit["limit_gib"]}


# --big: the grid of reduced-depth runs (vision blocks, text blocks, per-card batch) per model and recompute setting.
BIG_MODELS = ("ViT-H-14", "ViT-bigG-14")
# Batches 4 and 8: at batches 1-2 a block's activations (~0.03 GiB per sample for ViT-H-14) are below the RSS's
# run-to-run scatter (~0.1 GiB) and the fit comes out negative; the pool peak stays at one value at any of these.
BIG_POINTS = ((1, 1, 4), (2, 1, 4), (1, 2, 4), (1, 1, 8), (2, 1, 8), (1, 2, 8))
# Measured in fp32: on the CPU backend fp16 towers inflate the RSS with conversion buffers (ViT-H-14 fp16: +0.49 GiB
# per sample per vision block against ~0.03 GiB in fp32, which the activation count predicts), and bf16 has no
# CPU MatMul; fp16/bf16 activations are taken as half of fp32's (FP16_ACTIVATIONS), an estimate.
BIG_PRECISION = "fp32"
FP16_ACTIVATIONS = 0.5
# Bytes per parameter a card holds with fp16/bf16 towers: fp32 master weight and two AdamW moments (the state,
# 12), the fp32 gradient (4), the towers' 2-byte copy of the weight (2); accumulation adds the fp32 gradient sum.
BYTES_PER_PARAMETER = 12 + 4 + 2
ACCUM_BYTES_PER_PARAMETER = 4


def fit_depth_batch(points: dict) -> dict:
    """Least-squares fit of y = p0 + pv*Lv + pt*Lt + B*(s0 + sv*Lv + st*Lt) over {(Lv, Lt, B): GiB}: a fixed
    cost, costs per vision / text block, and per-sample costs (embeddings and loss; per vision / text block)."""
    import numpy as np

    keys = sorted(points)
    rows = np.array([[1, lv, lt, b, b * lv, b * lt] for lv, lt, b in keys], float)
    coef, *_ = np.linalg.lstsq(rows, np.array([points[k] for k in keys], float), rcond=None)
    return dict(zip(("p0", "pv", "pt", "s0", "sv", "st"), (float(c) for c in coef)))


def at(fit: dict, vision_layers: int, text_layers: int, batch: int) -> float:
    return (fit["p0"] + fit["pv"] * vision_layers + fit["pt"] * text_layers
            + batch * (fit["s0"] + fit["sv"] * vision_layers + fit["st"] * text_layers))


def per_sample_gib(fit: dict, vision_layers: int, text_layers: int) -> float:
    return fit["s0"] + fit["sv"] * vision_layers + fit["st"] * text_layers


def fixed_gib(parameters: int, accum_steps: int = 1) -> float:
    return parameters * (BYTES_PER_PARAMETER + (ACCUM_BYTES_PER_PARAMETER if accum_steps > 1 else 0)) / GIB


def largest_card_batch(per_sample: float, parameters: int, card_gib: float, accum_steps: int = 1,
                       usable: float = 0.9) -> int:
    """The largest per-card (micro-)batch B with fixed + B * per_sample <= usable * card (0: none fits)."""
    return max(0, math.floor((usable * card_gib - fixed_gib(parameters, accum_steps)) / per_sample))


def big(args) -> int:
    """ViT-H-14 and ViT-bigG-14 cannot train at full depth within this machine's memory: each runs at 1-2 blocks
    per tower and batch 4-8 (BIG_POINTS; fp32 towers, see BIG_PRECISION); the peak RSS and the pool peak are
    fitted linearly in each tower's blocks and the batch (fit_depth_batch) and the per-sample cost is
    extrapolated to the full depth. The parameter-bound part is counted, not fitted (BYTES_PER_PARAMETER)."""
    from clip.model.architectures import PRESETS, expected_shapes

    results = {"machine": machine(), "precision": BIG_PRECISION, "mode": args.train_mode, "points": BIG_POINTS,
               "method": "each run is clip.train's step at (vision blocks, text blocks, batch) of `points`, fp32 towers, "
                         "1 process; peak RSS and pool peak fitted as p0 + pv*Lv + pt*Lt + B*(s0 + sv*Lv + st*Lt) GiB; "
                         "per sample at full depth = s0 + sv*Lv + st*Lt of the RSS fit, extrapolated linearly in depth "
                         "(the pool peak stays at one value here and resolves nothing); fp16/bf16 per sample = half of "
                         "fp32's (estimate); per card = 18 bytes per parameter (fp32 weights, AdamW moments and "
                         "gradient, 2-byte tower copy; +4 with accumulation) + B x per sample, within 90% of the card",
               "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in BIG_MODELS:
            config = PRESETS[name]
            parameters = sum(math.prod(s) for s in expected_shapes(config).values())
            entry = results["models"][name] = {"parameters": parameters, "vision_layers": config.vision_layers,
                                               "text_layers": config.text_layers,
                                               "fixed_gib": round(fixed_gib(parameters), 2),
                                               "fixed_gib_accumulating": round(fixed_gib(parameters, 2), 2),
                                               "runs": {}, "fits": {}}
            # recompute only: on the CPU backend neither the RSS nor the pool resolves its effect at these batches
            for recompute in (False,):
                mode = "recompute" if recompute else "plain"
                rss, pool = {}, {}
                for lv, lt, batch in BIG_POINTS:
                    out = measure(batch, args.steps, Path(tmp), recompute=recompute, train_mode=args.train_mode,
                                  model=name, layers=(lv, lt), precision=BIG_PRECISION)
                    entry["runs"][f"{mode}_v{lv}_t{lt}_b{batch}"] = out
                    rss[(lv, lt, batch)], pool[(lv, lt, batch)] = out["peak_rss_gib"], out["pool_peak_gib"]
                fits = {"peak_rss": fit_depth_batch(rss), "pool_peak": fit_depth_batch(pool)}
                row = entry["fits"][mode] = {}
                for what, fit in fits.items():
                    row[what] = {k: round(v, 4) for k, v in fit.items()}
                    row[what]["max_residual_gib"] = round(max(abs(at(fit, *k) - v) for k, v in
                                                              (rss if what == "peak_rss" else pool).items()), 4)
                per_sample = per_sample_gib(fits["peak_rss"], config.vision_layers, config.text_layers)
                row["per_sample_gib_full_depth_fp32"] = round(per_sample, 3)
                row["per_sample_gib_full_depth_fp16_bf16"] = round(per_sample * FP16_ACTIVATIONS, 3)
                for card in (32, 64):
                    for accum in (1, 4):
                        row[f"largest_batch_{card}gb_k{accum}_fp16_bf16"] = largest_card_batch(
                            per_sample * FP16_ACTIVATIONS, parameters, card * 1e9 / GIB, accum)
                print(f"{name} {mode}: {row}", flush=True)
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, results, indent=2)
    print(f"wrote {args.out}")
    return 0


def locked(args) -> int:
    """The plain step at each batch unlocked and with each of `args.locks`, and the savings against unlocked."""
    results = {"machine": machine(), "preset": args.model, "precision": "fp32", "mode": args.train_mode, "processes": 1,
               "steps": args.steps, "unit": "GiB (2**30 bytes); state = weights (locked ones included) + moments",
               "locks": {k: LOCKS[k] for k in ["none"] + args.locks}, "runs": {}, "saved": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in sorted(set(args.batches)):
            base = results["runs"][f"plain_{batch}"] = measure(batch, args.steps, Path(tmp), train_mode=args.train_mode,
                                                               model=args.model)
            for lock in args.locks:
                run = results["runs"][f"plain_{batch}_lock_{lock}"] = measure(batch, args.steps, Path(tmp),
                                                                              train_mode=args.train_mode, lock=lock,
                                                                              model=args.model)
                results["saved"][f"plain_{batch}_lock_{lock}"] = {
                    key: round(base[key] - run[key], 3) for key in ("state_gib", "peak_rss_gib", "pool_peak_gib",
                                                                    "card_total_gib") if base.get(key) is not None
                    and run.get(key) is not None} | {"step_time_ratio": round(run["step_s"] / base["step_s"], 3)}
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, results, indent=2)
    print(json.dumps(results["saved"], indent=1))
    print(f"wrote {args.out}")
    return 0


def machine() -> dict:
    return {"cpus": psutil.cpu_count(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "memory_gib": round(psutil.virtual_memory().total / GIB, 1)}


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64], help="per-card batches")
    parser.add_argument("--accum", type=int, default=4, help="micro-batches of the smallest batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compile) step")
    parser.add_argument("--limit-gib", type=float, default=16.0, help="memory of the card to fit")
    parser.add_argument("--train-mode", choices=("graph", "pynative"), default="graph",
                        help="train.mode of the step (graph = compiled, as training runs by default)")
    parser.add_argument("--grad-clip-norm", type=float, default=0.0, help="train.grad_clip_norm of every step")
    parser.add_argument("--no-verify", action="store_true", help="do not run the predicted largest batches")
    parser.add_argument("--quick", action="store_true", help="batches 4 8, K = 2, 1 step, no verification")
    parser.add_argument("--out", default=None, help="default bench/results/memory[_pynative][_quick].json")
    parser.add_argument("--big", action="store_true",
                        help="ViT-H-14 and ViT-bigG-14 at 1 and 2 blocks per tower (BIG_POINTS), written to "
                             "bench/results/memory_big.json")
    parser.add_argument("--locks", nargs="+", choices=[k for k in LOCKS if k != "none"], default=None,
                        help="measure the plain step with these towers locked beside the unlocked one")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lock", choices=list(LOCKS), default="none", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=PRESET, help="with --locks: the model measured (default ViT-B/32)")
    parser.add_argument("--layers", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.accum, args.steps, args.no_verify = [4, 8], 2, 1, True
    name = "memory" + ("_pynative" if args.train_mode == "pynative" else "") + ("_quick" if args.quick else "") + \
        ("_big" if args.big else "") + ("_lock" if args.locks else "")
    args.out = args.out or str(REPO / "bench" / "results" / f"{name}.json")
    return args


def main() -> int:
    args = parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.big:
        return big(args)
    if args.locks:
        return locked(args)
    batches = sorted(set(args.batches))
    results = {"machine": machine(), "preset": PRESET, "precision": "fp32", "mode": args.train_mode, "processes": 1,
               "steps": args.steps, "grad_clip_norm": args.grad_clip_norm, "unit": "GiB (2**30 bytes); peak_rss = ru_maxrss of the worker process; pool_peak = peak in use of "
                       "MindSpore's memory pool (runtime memory_statistics); state = Parameters kept between steps (weights, "
                       "moments, gradient sum); card_total = state + pool_peak", "runs": {}}
    runs = results["runs"]
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            runs[f"plain_{batch}"] = measure(batch, args.steps, Path(tmp), train_mode=args.train_mode,
                                             grad_clip_norm=args.grad_clip_norm)
            runs[f"recompute_{batch}"] = measure(batch, args.steps, Path(tmp), recompute=True,
                                                 train_mode=args.train_mode, grad_clip_norm=args.grad_clip_norm)
        if args.accum > 1:
            runs[f"plain_{batches[0]}_x{args.accum}"] = measure(batches[0], args.steps, Path(tmp), accum=args.accum,
                                                                 train_mode=args.train_mode,
                                                                 grad_clip_norm=args.grad_clip_norm)
        results.update(summarise(runs, batches, args.accum))
        results["largest_batch"] = fit_and_predict(runs, batches, args.limit_gib)
        if not args.no_verify:
            for mode, fit in results["largest_batch"].items():
                fit["verified"] = verify(fit, mode, Path(tmp), args.train_mode)
    for name, target in results["targets"].items():
        print(f"{name}: {target}", flush=True)
    for mode, fit in results["largest_batch"].items():
        print(f"{mode}: peak = {fit['a_gib']} + {fit['b_gib_per_sample']} GiB x batch -> largest batch under "
              f"{fit['limit_gib']} GiB: {fit['largest_batch']}" + (f"; verified {fit['verified']}" if "verified" in fit else ""),
              flush=True)
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, results, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
