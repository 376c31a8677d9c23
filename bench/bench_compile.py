"""First-step time of a real training job, cold and on a second launch (compile cache), and after a change.

    python bench/bench_compile.py [--presets clip_tiny clip_vit_b_32] [--batch 4] [--out bench/results/compile.json]

Runs `python -m clip.train` (1 rank, graph mode, synthetic `shapes` data, 3 steps, log every step) three
times, each in its own output_dir and all with one fresh compile-cache root (`CLIP_COMPILE_CACHE_DIR`):
cold, the same job again (the train step's graph comes from the cache), and with a changed graph
constant (train.beta2), which must compile afresh.
The first step's time is read from the job's own metrics (step 1's samples/s covers compilation and the
step since the loop started), and so is a steady step's (the median of steps 2 and 3); their difference is
the wait before the first step really starts (compiling, or loading the cached graph), the figure the
5 s target of issue 14 is about. The process wall time (launch to exit) is reported too.
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

REPO = Path(__file__).resolve().parent.parent


def launch(out: Path, cache: Path, preset: str, batch: int, extra: list) -> dict:
    overrides = [f"model.name={preset}", "data.train.type=shapes", f"data.train.num_samples={batch}", "data.eval=null",
                 f"train.batch_size={batch}", "train.max_steps=3", "train.log_every=1", "train.resume=none",
                 "train.mode=graph", "train.overwrite=true", f"output_dir={out}"] + extra
    cmd = [sys.executable, "-m", "clip.train"] + [a for o in overrides for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_", "DEVICE_"))}
    env.update(GLOG_v="3", CLIP_COMPILE_CACHE_DIR=str(cache))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = {r["step"]: r for r in rows if "loss" in r}
    seconds = {step: batch / r["samples_per_s"] for step, r in train_rows.items()}
    first, steady = seconds[1], statistics.median([seconds[2], seconds[3]])
    return {"first_step_s": round(first, 2), "steady_step_s": round(steady, 2),
            "wait_before_first_step_s": round(first - steady, 2), "process_wall_s": round(wall, 1),
            "loss": train_rows[1]["loss"], "load_avg": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["clip_tiny", "clip_vit_b_32"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "compile.json"))
    args = parser.parse_args()
    results = {"load_avg_at_start": [round(x, 2) for x in os.getloadavg()], "batch": args.batch, "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            runs, cache = Path(tmp) / preset, Path(tmp) / preset / "cache"
            entry = {"cold": launch(runs / "cold", cache, preset, args.batch, []),
                     "second_launch": launch(runs / "again", cache, preset, args.batch, []),
                     "changed_beta2": launch(runs / "beta2", cache, preset, args.batch, ["train.beta2=0.9"])}
            entry["cache_dirs"] = len([p for p in cache.iterdir() if p.is_dir()])
            entry["same_loss_on_second_launch"] = entry["cold"]["loss"] == entry["second_launch"]["loss"]
            print(f"{preset}: first step cold {entry['cold']['first_step_s']} s, second launch "
                  f"{entry['second_launch']['first_step_s']} s, changed config {entry['changed_beta2']['first_step_s']} s; "
                  f"wait before it {entry['cold']['wait_before_first_step_s']} / "
                  f"{entry['second_launch']['wait_before_first_step_s']} / "
                  f"{entry['changed_beta2']['wait_before_first_step_s']} s "
                  f"(process {entry['cold']['process_wall_s']} / {entry['second_launch']['process_wall_s']} / "
                  f"{entry['changed_beta2']['process_wall_s']} s)", flush=True)
            results["presets"][preset] = entry
    results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
