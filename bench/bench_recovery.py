"""Recovery after each kind of fault of the kill-anything soak (tests/soak_runs.py), against a fresh start of
the same job in the same run.

One 2-rank clip_tiny job (the soak's config: batch 4 per rank, a checkpoint every step on a tmpfs) is struck
`--repeats` times by each fault, always one step and 0.2 s into an attempt, kinds interleaved:
- kill: SIGKILL of one rank (ranks alternate) -> the launcher restarts the group (--max-restarts);
- sigterm: SIGTERM to the launcher -> the workers save and exit 75 -> a fresh launcher resumes;
- disk_full: the disk fills -> the next checkpoint write fails -> the launcher restarts (the space given back
  as soon as the failure is reported).
Recovery is the time from the fault (for disk_full: from the failure's report) to the first training step
completed by the next attempt. The reference is the same job's fresh start, launcher start to its first
step, measured before the faults (one uninterrupted run, which also checks the end is bit-identical).
Writes bench/results/recovery.json. Needs root (it mounts the tmpfs, as tests/test_disk_full.py does).

    python bench/bench_recovery.py [--repeats 3]
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "recovery.json"
sys.path.insert(0, str(REPO / "tests"))

from launcher.safe_write import write_json  # noqa: E402

import soak_runs  # noqa: E402
from training_runs import stored_arrays  # noqa: E402


def fixed_schedule(repeats: int) -> list:
    faults = []
    for i in range(repeats):
        faults += [soak_runs.Fault("kill", 1, 0.2, rank=i % soak_runs.WORLD), soak_runs.Fault("sigterm", 1, 0.2),
                   soak_runs.Fault("disk_full", 1, 0.2)]
    return faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="faults of each kind")
    args = parser.parse_args()
    os.environ.setdefault("CLIP_COMPILE_CACHE_DIR", tempfile.mkdtemp(prefix="bench-recovery-cache-"))
    faults = fixed_schedule(args.repeats)
    steps = soak_runs.total_steps(faults)
    with tempfile.TemporaryDirectory(prefix="bench_recovery_") as tmp:
        base = Path(tmp)
        # Warm the compile cache first, as every restart of a real job finds it (the first launch compiles).
        # (a Soak that is only launched, never struck: the same job and step count as the struck one)
        warm = soak_runs.Soak(0, faults, base / "warm", base / "warm_logs", disk=None)
        assert warm.launch().finish(soak_runs.WAIT) == 0
        launch = soak_runs.Soak(0, faults, base / "straight", base / "straight_logs", disk=None).launch()
        assert launch.finish(soak_runs.WAIT) == 0, launch.text()[-3000:]
        fresh = round(launch.steps_since(0)[0][0] - launch.attempt_starts[0][0], 3)
        disk = soak_runs.SmallDisk(base / "disk")
        run = soak_runs.Soak(0, faults, base / "disk" / "run", base / "logs", disk)
        wall = time.monotonic()
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            run.run()
            wall = time.monotonic() - wall
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            ended = stored_arrays(run.out / "checkpoints" / "last.ckpt")
            reference = stored_arrays(base / "straight" / "checkpoints" / "last.ckpt")
            identical = ended.keys() == reference.keys() and all(np.array_equal(ended[k], reference[k]) for k in ended)
            leftovers = soak_runs.leftovers([run.out, run.logs])
        finally:
            disk.unmount()
    assert run.exit_code == 0, run.describe()
    by_kind = {kind: [e.recovery_s() for e in run.events if e.fault.kind == kind] for kind in soak_runs.KINDS}
    report = {
        "command": "python bench/bench_recovery.py" + (f" --repeats {args.repeats}" if args.repeats != 3 else ""),
        "job": {"model": "clip_tiny", "world": soak_runs.WORLD, "overrides": soak_runs.OVERRIDES, "steps": steps,
                "checkpoint_every_step": True, "launcher": {"grace_period": soak_runs.GRACE}},
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared machine, other jobs running: absolute times inflated, compare the ratios"},
        "fresh_start_to_first_step_s": fresh,
        "recovery_s": {kind: {"median": statistics.median(v), "samples": v,
                              "ratio_to_fresh_start": round(statistics.median(v) / fresh, 2)}
                       for kind, v in by_kind.items()},
        "soak": {"faults": len(faults), "wall_s": round(wall, 1),
                 "children_cpu_s": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 1),
                 "bit_identical_to_uninterrupted": bool(identical), "leftover_files": leftovers},
    }
    write_json(str(RESULTS), report, indent=2)
    print(json.dumps({k: report[k] for k in ("fresh_start_to_first_step_s", "recovery_s", "soak")}, indent=1))


if __name__ == "__main__":
    main()
