"""Patch dropout's train-step speed-up (FLIP), ours and open_clip's side by side in one run.

    python bench/bench_patch_dropout.py [--preset clip_vit_b_16] [--layers N] [--batch 8] [--steps 3] [--probs 0 0.5 0.75]

Ours: clip.train's compiled step (`build_train_step`, GRAPH_MODE, one rank) fed the kept-patch indices the
loop draws (clip.model.patch_dropout, drawn inside the timed region as the loop does). The anchor: open_clip
3.3.0's CLIP with our preset's shapes (bench/openclip_anchor.py), its `PatchDropout` at the same
probability, ClipLoss and torch.optim.AdamW, timed with every core and with one thread (the faster counts). Each framework runs in its own process, one after the other,
so only one model's memory is held at a time; within a process the probabilities take turns. The first
step (graph compilation) is reported apart and not timed. Inputs are fixed random tensors. Load averages
are recorded (the machine is shared): read the speed-ups (each framework against itself at 0.0), which
both frameworks measure under the same conditions, rather than absolute rates. `--layers N` keeps the
preset's shapes but N residual blocks per tower (both towers cut alike, so the image tower's share of the
step, which patch dropout shrinks, stays about the full model's), for a machine too busy for the full model.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_train import fake_batch, peak_rss_gb, run  # noqa: E402  (the train benchmark's inputs and runner)

from launcher.safe_write import write_json  # noqa: E402

RESULT = REPO / "bench" / "results" / "patch_dropout_vit_b_16.json"


def architecture(args):
    import dataclasses

    from clip.model.architectures import get_config

    config = get_config(args.preset)
    return dataclasses.replace(config, vision_layers=args.layers, text_layers=args.layers) if args.layers else config


def timed(step, steps: int) -> tuple[float, float]:
    """(first call in s, median of the next `steps` calls in s)."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def ours_worker(args) -> dict:
    import mindspore as ms
    import numpy as np

    from clip.config import load_config
    from clip.loss.contrastive import ContrastiveLoss
    from clip.model import create_model
    from clip.model import patch_dropout as pd
    from clip.parallel import distributed
    from clip.train.optim import build_optimizer
    from clip.train.step import build_train_step

    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    t = load_config(None, [f"model.name={args.preset}", f"train.batch_size={args.batch}", "train.lr=1e-4"]).train
    ms.set_seed(0)
    model = create_model(architecture(args))
    optimizer = build_optimizer(model, t.optimizer, t.weight_decay, t.beta1, t.beta2, t.eps)
    step_cell = build_train_step(t, model, ContrastiveLoss("local"), optimizer,
                                 distributed.grad_reducer(optimizer.parameters, info))
    images, tokens = (ms.Tensor(x) for x in fake_batch(model.config, args.batch, seed=0))
    lr, patches = ms.Tensor(np.float32(t.lr)), model.config.grid_size ** 2
    out = {}
    for prob in args.probs:
        count = [0]

        def step():
            keep = () if not prob else (ms.Tensor(pd.keep_indices(0, count[0], np.arange(args.batch), patches, prob)),)
            count[0] += 1
            step_cell(images, tokens, lr, *keep)[0].asnumpy()
        first, step_s = timed(step, args.steps)
        out[str(prob)] = {"first_step_s": round(first, 2), "step_s": round(step_s, 3),
                          "samples_per_s": round(args.batch / step_s, 3), "kept_patches": pd.keep_count(patches, prob),
                          "load_avg_1m_after": round(os.getloadavg()[0], 1)}
    out["peak_rss_gb"] = round(peak_rss_gb(), 2)
    return out


def open_clip_worker(args) -> dict:
    import torch

    import openclip_anchor
    config = architecture(args)
    images, tokens = fake_batch(config, args.batch, seed=0)
    images, tokens = torch.from_numpy(images), torch.from_numpy(tokens).long()
    torch.manual_seed(0)
    model = openclip_anchor.create(args.preset, config if args.layers else None).train()
    step_fn = openclip_anchor.train_step(model, openclip_anchor.optimizer(model, fused=False))
    patch_dropout = openclip_anchor.import_open_clip().transformer.PatchDropout
    all_threads = torch.get_num_threads()
    out = {"torch": torch.__version__}
    for prob in args.probs:
        model.visual.patch_dropout = patch_dropout(prob) if prob else torch.nn.Identity()
        model.train()
        # torch's worker threads stall when another process holds a core, one thread does not: the faster counts
        by_threads = {}
        for threads in sorted({all_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            by_threads[threads] = timed(lambda: step_fn(images, tokens), args.steps)
        threads, (first, step_s) = min(by_threads.items(), key=lambda item: item[1][1])
        out[str(prob)] = {"first_step_s": round(first, 2), "step_s": round(step_s, 3), "threads": threads,
                          "step_s_by_threads": {str(k): round(v[1], 3) for k, v in by_threads.items()},
                          "samples_per_s": round(args.batch / step_s, 3),
                          "load_avg_1m_after": round(os.getloadavg()[0], 1)}
    out["peak_rss_gb"] = round(peak_rss_gb(), 2)
    return out


def speedups(side: dict, probs) -> dict:
    base = side[str(probs[0])]["samples_per_s"]
    return {str(p): round(side[str(p)]["samples_per_s"] / base, 3) for p in probs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="clip_vit_b_16")
    parser.add_argument("--layers", type=int, help="residual blocks per tower (default: the preset's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--probs", type=float, nargs="+", default=[0.0, 0.5, 0.75])
    parser.add_argument("--out", default=str(RESULT))
    parser.add_argument("--worker", choices=("ours", "open_clip"))
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.worker:
        result = ours_worker(args) if args.worker == "ours" else open_clip_worker(args)
        Path(args.result).write_text(json.dumps(result))
        return
    if args.probs[0] != 0:
        parser.error("--probs must start with 0 (the baseline of the speed-ups)")
    sides, loads = {}, {"before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("ours", "open_clip"):
            result = Path(tmp) / f"{side}.json"
            run([sys.executable, __file__, "--worker", side, "--result", str(result), "--preset", args.preset,
                 "--batch", str(args.batch), "--steps", str(args.steps), "--probs", *map(str, args.probs)]
                + (["--layers", str(args.layers)] if args.layers else []),
                timeout=3600)
            sides[side] = json.loads(result.read_text())
            print(side, json.dumps(sides[side]), flush=True)
    loads["after"] = os.getloadavg()
    out = {"preset": args.preset, "blocks_per_tower": args.layers or "all", "batch": args.batch, "timed_steps": args.steps, "probs": args.probs,
           "ours": sides["ours"], "open_clip": sides["open_clip"],
           "speedup_ours": speedups(sides["ours"], args.probs),
           "speedup_open_clip": speedups(sides["open_clip"], args.probs),
           "ours_over_open_clip": {str(p): round(sides["ours"][str(p)]["samples_per_s"]
                                                 / sides["open_clip"][str(p)]["samples_per_s"], 3) for p in args.probs},
           "load_avg": {k: [round(x, 1) for x in v] for k, v in loads.items()}, "cpus": os.cpu_count(),
           "note": "2 CPU cores shared with other jobs during the run (see load_avg): rates are noisy, the "
                   "speed-ups of each framework against itself are the figures to read"}
    write_json(args.out, out)
    print(json.dumps({k: out[k] for k in ("speedup_ours", "speedup_open_clip", "ours_over_open_clip")}))


if __name__ == "__main__":
    main()
