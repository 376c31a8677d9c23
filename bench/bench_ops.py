"""Where one compiled train step's time goes, kernel type by kernel type (MindSpore's profiler, CPU).

    python bench/bench_ops.py [--preset clip_vit_b_32] [--batch 16] [--steps 2] [--out FILE]

Builds clip.train's step exactly as bench_memory.py does (1 process, GRAPH_MODE, fp32, fixed random inputs),
runs two warm-up steps, then `--steps` steps under `mindspore.Profiler`, and writes per kernel type the
milliseconds per step, the number of launches per step and the share of the step, largest first
(default bench/results/ops_<preset>.json). bench_phases.py splits a step into forward / backward / optimiser;
this says which kernels fill those phases, which is where a faster composition of ops pays.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_train import fake_batch  # noqa: E402

from launcher.safe_write import write_json  # noqa: E402


def kernel_table(rows, steps: int) -> list:
    """Rows of the profiler's cpu_op_type_info csv -> [{op, ms_per_step, launches_per_step, share}], largest
    first; shares are of the kernels' total."""
    total = sum(float(r["total_compute_time"]) for r in rows)
    table = [{"op": r["op_type"], "ms_per_step": round(float(r["total_compute_time"]) / steps, 1),
              "launches_per_step": int(r["type_occurrences"]) // steps,
              "share": round(float(r["total_compute_time"]) / total, 4)} for r in rows]
    return sorted(table, key=lambda row: -row["ms_per_step"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="clip_vit_b_32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import mindspore as ms
    import numpy as np
    from mindspore import Profiler

    from clip.config import load_config
    from clip.loss.contrastive import ContrastiveLoss
    from clip.model import create_model
    from clip.parallel import distributed
    from clip.train import build_train_step
    from clip.train.optim import build_optimizer

    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    cfg = load_config(None, [f"model.name={args.preset}", f"train.batch_size={args.batch}", "train.lr=1e-4"])
    t = cfg.train
    ms.set_seed(0)
    model = create_model(cfg.model.name)
    optimizer = build_optimizer(model, t.optimizer, t.weight_decay, t.beta1, t.beta2, t.eps)
    step = build_train_step(t, model, ContrastiveLoss(cfg.loss.mode), optimizer,
                            distributed.grad_reducer(optimizer.parameters, info))
    images, tokens = (ms.Tensor(x) for x in fake_batch(model.config, args.batch, seed=0))
    lr = ms.Tensor(np.float32(t.lr))
    for _ in range(2):
        step(images, tokens, lr)[0].asnumpy()
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as folder:
        profiler = Profiler(output_path=folder)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step(images, tokens, lr)[0].asnumpy()
            times.append(time.perf_counter() - start)
        profiler.analyse()
        found = sorted(Path(folder).rglob("cpu_op_type_info_*.csv"))
        if not found:
            print(f"error: the profiler wrote no cpu_op_type_info csv under {folder}", file=sys.stderr)
            return 1
        with open(found[0], newline="") as f:
            table = kernel_table(list(csv.DictReader(f)), args.steps)
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"ops_{args.preset}.json"
    result = {"preset": args.preset, "batch": args.batch, "precision": "fp32", "mode": "graph", "processes": 1,
              "profiled_steps": args.steps, "step_s_under_profiler": [round(x, 3) for x in times],
              "kernels_ms_per_step": round(sum(r["ms_per_step"] for r in table), 1),
              "load_avg": [round(x, 2) for x in os.getloadavg()], "kernels": table}
    write_json(str(out), result)
    for row in table[:12]:
        print(f"{row['op']:20s} {row['ms_per_step']:8.1f} ms/step  {row['launches_per_step']:5d} launches  "
              f"{100 * row['share']:5.1f}%")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
