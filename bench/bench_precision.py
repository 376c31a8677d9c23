"""fp32 vs fp16 train step on CPU: step time, first-step (compile) time and peak RSS.

    python bench/bench_precision.py [--presets clip_tiny clip_vit_b_32] [--batch 16] [--rounds 1]
                                    [--out bench/results/precision.json]

The same compiled `clip.train.TrainStep` with AdamW (bench/bench_optim.py's worker, one fresh process per
measurement, alternating); fp16 adds float16 towers and dynamic loss scaling. On CPU float16 is not the
point: MindSpore's CPU float16 kernels are not faster than float32 ones and the casts cost extra, so this
records what fp16 costs here, while its purpose is Ascend, where float16 is how CLIP is trained.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optim import STEPS, best_of_rounds, machine, step_bench_arguments, step_worker, write_results  # noqa: E402


def main() -> int:
    args = step_bench_arguments(__doc__.splitlines()[0], "precision.json", rounds=1)
    if args.worker:
        step_worker(args)
        return 0
    results = {"machine": machine(), "batch": args.batch, "rounds": args.rounds, "presets": {}}
    for preset in args.presets:
        steps = args.steps or STEPS.get(preset, 5)
        entry = best_of_rounds(preset, args.batch, steps, [("fp32", "adamw", "fp32"), ("fp16", "adamw", "fp16")],
                               args.rounds)
        fp32, fp16 = entry["fp32"]["best"], entry["fp16"]["best"]
        entry["fp16_over_fp32_step_time"] = round(fp16["step_s"] / fp32["step_s"], 3)
        entry["fp16_over_fp32_peak_rss"] = round(fp16["peak_rss_gb"] / fp32["peak_rss_gb"], 3)
        print(f"{preset}: fp16 / fp32 step time {entry['fp16_over_fp32_step_time']}, peak RSS "
              f"{entry['fp16_over_fp32_peak_rss']}", flush=True)
        results["presets"][preset] = entry
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
