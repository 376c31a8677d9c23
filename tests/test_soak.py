"""The kill-anything soak (tests/soak_runs.py): a 2-rank job with --max-restarts, interrupted FAULTS times in
a row at seeded random moments by SIGKILL of a random rank, SIGTERM to the launcher and a full disk during a
checkpoint, each time restarted, ends exactly where the same job ends uninterrupted, and leaves no temporary
file, held lock, /dev/shm name or process behind.

The seed is fixed, so that CI strikes the same schedule every time and a failure reproduces; it is printed
with the schedule and the launchers' last lines whenever an assertion fails. `CLIP_SOAK_SEED=<seed>` runs
another schedule (any seed must pass). The job has a compile cache of its own and counts only /dev/shm names
that no live process holds, so modules that run beside it (pytest-xdist) cannot make it fail.
"""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soak_runs
from training_runs import BIND, REPO, losses, stored_arrays, train_command


# First in the module: the soak fixture's teardown (it unmounts its disk) then runs after a marked test.
def test_a_killed_saves_temporaries_are_removed_and_nothing_else(tmp_path):
    """What a SIGKILL mid-save leaves (safe_write's and link_atomic's hidden temporaries, and the '.tmp' MindSpore
    derives from one) goes; the run's own files stay."""
    from clip.train import checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    kept = [tmp_path / "config.yaml", tmp_path / "metrics.jsonl", ckpts / "last.ckpt", ckpts / "step_00000004.ckpt"]
    left = [tmp_path / ".metrics.jsonl.k2j_x8.tmp.jsonl", ckpts / ".step_00000005.ckpt.9_d845is.tmp.ckpt",
            ckpts / ".step_00000005.ckpt.9_d845is.tmp.ckpt.tmp", ckpts / ".last.ckpt.4242.tmp.ckpt"]
    for path in kept + left:
        path.write_bytes(b"x")
    assert checkpoint.remove_leftovers(str(tmp_path)) == sorted(map(str, left[:1])) + sorted(map(str, left[1:]))
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)
    assert checkpoint.remove_leftovers(str(tmp_path)) == []


# The 20 interruptions in a row, every kind 6 or 7 times (docs/launcher.md, "The kill-anything soak").
FAULTS = 20
SEED = 48


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    base = tmp_path_factory.mktemp("soak")
    seed = int(os.environ.get("CLIP_SOAK_SEED") or SEED)
    faults = soak_runs.schedule(seed, FAULTS)
    steps = soak_runs.total_steps(faults)
    # The uninterrupted job runs beside the soak, started once the soak has compiled its graphs into the cache
    # they share (both ranks' keys complete), so that it loads them instead of compiling them a second time.
    cache = base / "compile-cache"
    straight, stop = {}, threading.Event()

    def start_straight():
        deadline = time.monotonic() + soak_runs.WAIT
        while len(list(cache.glob("*/complete"))) < soak_runs.WORLD and time.monotonic() < deadline:
            if stop.wait(0.2):
                return
        straight["proc"] = subprocess.Popen(
            [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(soak_runs.WORLD), BIND, "--log-dir",
             str(base / "straight" / "logs"), "--no-chdir", "--"] + train_command(
                soak_runs.OVERRIDES + [f"train.max_steps={steps}", f"output_dir={base / 'straight'}"]),
            cwd=REPO, env=soak_runs.soak_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    starter = threading.Thread(target=start_straight, daemon=True)
    starter.start()
    shm_before = soak_runs.shm_names()
    disk = soak_runs.SmallDisk(base / "disk")
    run = soak_runs.Soak(seed, faults, base / "disk" / "run", base / "logs", disk)
    try:
        try:
            run.run()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{run.describe()}") from None
        starter.join()
        assert straight["proc"].wait(timeout=soak_runs.WAIT) == 0, "the uninterrupted job failed"
        yield {"run": run, "straight": base / "straight", "base": base, "shm_before": shm_before,
               "arrays": stored_arrays(run.out / "checkpoints" / "last.ckpt"), "losses": losses(run.out),
               "checkpoints": sorted(os.listdir(run.out / "checkpoints")),
               "leftovers": soak_runs.leftovers([run.out, run.logs]), "shm_after": soak_runs.shm_names()}
    finally:
        stop.set()
        starter.join()
        if "proc" in straight and straight["proc"].poll() is None:
            straight["proc"].kill()
            straight["proc"].wait()
        disk.unmount()


@pytest.mark.processes
def test_every_fault_struck_and_the_job_recovered_from_each(soak):
    run = soak["run"]
    why = run.describe()
    assert run.exit_code == 0, why
    assert len(run.events) == FAULTS and all(e.struck is not None for e in run.events), why
    assert {e.fault.kind for e in run.events} == set(soak_runs.KINDS), why
    assert all(e.recovered is not None for e in run.events), why  # a later attempt trained again after each
    full = [e for e in run.events if e.fault.kind == "disk_full"]
    assert all(e.note == "(disk full reported)" for e in full), why
    sigterms = sum(e.fault.kind == "sigterm" for e in run.events)
    assert len(run.launches) == sigterms + 1, why  # every SIGTERM ended its launcher; a fresh one resumed


@pytest.mark.processes
def test_interrupted_job_ends_bit_identical_to_the_uninterrupted_one(soak):
    """Every stored array, optimiser state and run position included, to the bit."""
    straight = stored_arrays(soak["straight"] / "checkpoints" / "last.ckpt")
    ended = soak["arrays"]
    why = soak["run"].describe()
    assert ended.keys() == straight.keys() and len(ended) > 20, why
    differ = [k for k in ended if not np.array_equal(ended[k], straight[k])]
    assert not differ, f"{len(differ)} arrays differ, first {differ[:3]}\n{why}"
    assert soak["checkpoints"] == ["last.ckpt", f"step_{soak['run'].steps:08d}.ckpt"], why


@pytest.mark.processes
def test_metrics_read_like_one_run(soak):
    """Each step once, with the uninterrupted run's loss. Not to the bit: a step that a resumed process
    computes reports its loss up to 2 float32 ulps off (the parameters are bit-identical; docs/launcher.md)."""
    straight, ended = losses(soak["straight"]), soak["losses"]
    assert sorted(ended) == list(range(1, soak["run"].steps + 1)) == sorted(straight)
    worst = max(abs(ended[s] - straight[s]) / abs(straight[s]) for s in straight)
    assert worst <= 1e-6, f"loss off by {worst:.3g} relative\n{soak['run'].describe()}"


@pytest.mark.processes
def test_nothing_left_behind(soak):
    """No temporary file in the output directory or the logs, no lock still held and no temporary in the
    compile cache, no new /dev/shm name, no process of the job."""
    why = soak["run"].describe()
    cache = soak["run"].cache
    assert soak["leftovers"] == [], why
    assert soak_runs.leftovers([cache]) == [] and soak_runs.held_locks(cache) == [], why
    assert soak_runs.orphaned(soak["shm_after"] - soak["shm_before"]) == set(), why
    assert soak_runs.processes_using(soak["base"]) == [], why

