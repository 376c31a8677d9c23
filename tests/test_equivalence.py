"""N cards train exactly like one: world size 1 (batch 8), 2 (batch 4 each) and 4 (batch 2 each) give the
same per-step global losses and final parameters; MindFormers' local-only loss does not.

Real CPU dynamic clusters through the real launcher (`python -m launcher run --backend cluster`).
One run per configuration, shared by all checks; 24 samples / global batch 8 = 3 steps per epoch, so the
5 steps also cross an epoch boundary (new permutation, new captions).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clusters import clean_environ

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-5

TINY = ["model.name=clip_tiny", "data.train.type=shapes", "data.train.num_samples=24", "data.eval=null",
        "train.max_steps=5", "train.lr=1e-3", "train.warmup_steps=2", "train.weight_decay=0.1",
        "train.seed=7", "train.num_workers=1", "train.resume=none"]


def clean_env() -> dict:
    env = clean_environ()
    env["PYTHONUNBUFFERED"] = "1"
    env["GLOG_v"] = "3"  # MindSpore: errors only, keep worker logs readable
    return env


def train_command(overrides) -> list:
    cmd = [sys.executable, "-m", "clip.train"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def run_training(out_dir: Path, world: int, overrides, timeout: float = 300) -> subprocess.CompletedProcess:
    """clip.train on `world` workers (launcher, cluster backend) or as one plain process for world 1."""
    cmd = train_command(list(overrides) + [f"output_dir={out_dir}"])
    if world > 1:
        cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(world),
               "--log-dir", str(out_dir / "logs"), "--no-chdir", "--tee", "0", "--"] + cmd
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        logs = "".join(f"\n--- {p}\n{p.read_text()[-3000:]}" for p in sorted((out_dir / "logs").glob("*.log"))
                       ) if (out_dir / "logs").is_dir() else ""
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                             f"{logs}")
    return proc


def start_training(out_dir: Path, overrides) -> subprocess.Popen:
    """clip.train as one plain process, not waited for (finish_training does). Single-process runs share no
    port, and much of a short run is single-threaded start-up and compilation, so two cores finish several
    side by side sooner (measured: two tiny K = 4 runs took 25 s one after the other, 16 s together)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out_dir}.stdout", "w") as stdout, open(f"{out_dir}.stderr", "w") as stderr:
        return subprocess.Popen(train_command(list(overrides) + [f"output_dir={out_dir}"]), cwd=REPO, env=clean_env(),
                                stdout=stdout, stderr=stderr, text=True)


def finish_training(out_dir: Path, proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout, stderr = Path(f"{out_dir}.stdout").read_text(), Path(f"{out_dir}.stderr").read_text()
    if proc.returncode != 0:
        raise AssertionError(f"training in {out_dir} failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_trainings(jobs: dict) -> dict:
    """Several single-process trainings ({out_dir: overrides}) side by side; out_dir -> CompletedProcess."""
    started = {out: start_training(out, overrides) for out, overrides in jobs.items()}
    try:
        return {out: finish_training(out, proc) for out, proc in started.items()}
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()


def losses(out_dir: Path) -> dict:
    """step -> global loss from metrics.jsonl (each step exactly once)."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    steps = [r["step"] for r in train_rows]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in train_rows}


def metric(out_dir: Path, key: str) -> dict:
    """step -> `key` of the training lines of metrics.jsonl."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if "loss" in r}


def model_params(ckpt: Path) -> dict:
    """The model's parameters (OpenAI names) from a training checkpoint, as numpy."""
    import mindspore as ms

    from clip.train.checkpoint import META_KEYS, TEXT_META
    from clip.train.precision import SCALER_STATE

    stored = ms.load_checkpoint(str(ckpt))
    return {k: v.asnumpy() for k, v in stored.items()
            if not k.startswith(("adam_", "global_step")) and k not in META_KEYS + SCALER_STATE + tuple(TEXT_META)}


def function_part(name: str, value: np.ndarray) -> np.ndarray:
    """The part of a parameter that the model's output depends on. The key third of `attn.in_proj_bias`
    adds a constant to every score of a query row, which softmax ignores: its true gradient is exactly zero,
    so what reaches it is float rounding noise, and AdamW's bias-corrected update turns that noise into
    steps of up to lr that differ between world sizes (2.7e-5 after 5 steps here) without changing the model."""
    if name.endswith("attn.in_proj_bias"):
        width = value.shape[0] // 3
        return np.concatenate([value[:width], value[2 * width:]])
    return value


def max_param_diff(a: dict, b: dict) -> tuple:
    assert a.keys() == b.keys()
    return max((float(np.max(np.abs(function_part(k, a[k]) - function_part(k, b[k])))), k) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("equivalence")
    # one multi-rank run in PyNative (the custom-bprop gather and the reducer run op by op there)
    plan = {"w1": (1, 8, "local", "graph", []), "w2": (2, 4, "local", "pynative", []),
            "w4": (4, 2, "local", "graph", []), "w2_local_only": (2, 4, "local_only", "graph", []),
            # contrastive gradient accumulation: (W, B, K) = (2, 2, 2) and (1, 2, 4), global batch 8
            "w2_k2": (2, 2, "local", "graph", ["train.accum_steps=2"]),
            "w1_k4": (1, 2, "local", "graph", ["train.accum_steps=4"]),
            "w2_k2_full": (2, 2, "full", "graph", ["train.accum_steps=2"]),
            "w2_k2_plain": (2, 2, "local", "graph", ["train.accum_steps=2", "train.accum_mode=plain"])}
    overrides = {name: TINY + [f"train.batch_size={batch}", f"loss.mode={mode}", f"train.mode={exec_mode}"] + extra
                 for name, (world, batch, mode, exec_mode, extra) in plan.items()}
    # the one-process runs go side by side with the clusters (start_training), the clusters one at a time
    single = {name: start_training(base / name, overrides[name]) for name, p in plan.items() if p[0] == 1}
    try:
        procs = {name: run_training(base / name, p[0], overrides[name]) for name, p in plan.items() if p[0] > 1}
        procs.update({name: finish_training(base / name, proc) for name, proc in single.items()})
    finally:
        for proc in single.values():
            if proc.poll() is None:
                proc.kill()
    return {name: {"losses": losses(base / name), "params": model_params(base / name / "checkpoints" / "last.ckpt"),
                   "stdout": procs[name].stdout, "out": base / name} for name in plan}


def test_global_losses_agree_across_world_sizes(runs):
    ref = runs["w1"]["losses"]
    assert sorted(ref) == [1, 2, 3, 4, 5]
    for name in ("w2", "w4"):
        got = runs[name]["losses"]
        assert sorted(got) == sorted(ref)
        worst = max(abs(got[s] - ref[s]) for s in ref)
        assert worst <= TOL, f"{name}: per-step global loss differs by {worst:.3g} from world size 1"
    # the run learned something, so agreeing is not trivial
    assert len(set(round(v, 6) for v in ref.values())) == 5


def test_final_parameters_agree_across_world_sizes(runs):
    ref = runs["w1"]["params"]
    assert "visual.conv1.weight" in ref and "logit_scale" in ref and len(ref) > 20
    for name in ("w2", "w4"):
        diff, key = max_param_diff(runs[name]["params"], ref)
        assert diff <= TOL, f"{name}: parameter {key} differs by {diff:.3g} from world size 1"


def test_grad_norm_is_the_global_batch_norm_on_any_world_size(runs):
    """grad_norm is taken after the mean all-reduce: W cards log the norm of the one-card gradient."""
    ref = metric(runs["w1"]["out"], "grad_norm")
    assert all(v > 0 for v in ref.values()) and len(set(ref.values())) == 5
    for name in ("w2", "w4"):
        got = metric(runs[name]["out"], "grad_norm")
        worst = max(abs(got[s] - ref[s]) / ref[s] for s in ref)
        assert worst <= TOL, f"{name}: grad_norm differs by {worst:.3g} (relative) from world size 1"


def test_local_only_loss_is_a_different_objective(runs):
    """MindFormers' per-card loss: neither the logged loss nor the trained weights match one card."""
    ref, got = runs["w1"], runs["w2_local_only"]
    worst_loss = max(abs(got["losses"][s] - ref["losses"][s]) for s in ref["losses"])
    diff, _ = max_param_diff(got["params"], ref["params"])
    assert worst_loss > 100 * TOL, f"local-only loss agrees within {worst_loss:.3g}"
    assert diff > 100 * TOL, f"local-only parameters agree within {diff:.3g}"


def test_contrastive_accumulation_trains_like_the_whole_global_batch(runs):
    """(W, B, K) = (2, 2, 2) and (1, 2, 4) equal (1, 8, 1): the same per-step global loss and parameters;
    (2, 2, 2) also with `loss.mode=full` (every rank computes the whole logit matrix)."""
    ref = runs["w1"]
    for name in ("w2_k2", "w1_k4", "w2_k2_full"):
        got = runs[name]
        assert sorted(got["losses"]) == sorted(ref["losses"])
        worst = max(abs(got["losses"][s] - ref["losses"][s]) / ref["losses"][s] for s in ref["losses"])
        assert worst <= 1e-6, f"{name}: per-step global loss differs by {worst:.3g} (relative)"
        diff, key = max_param_diff(got["params"], ref["params"])
        assert diff <= TOL, f"{name}: parameter {key} differs by {diff:.3g} from (1, 8, 1)"


def test_plain_accumulation_is_a_different_objective(runs):
    ref, got = runs["w1"], runs["w2_k2_plain"]
    worst_loss = max(abs(got["losses"][s] - ref["losses"][s]) for s in ref["losses"])
    diff, _ = max_param_diff(got["params"], ref["params"])
    assert worst_loss > 100 * TOL and diff > 100 * TOL, f"plain accumulation agrees ({worst_loss:.3g}, {diff:.3g})"


def test_rank_zero_reports_the_run(runs):
    out = runs["w2"]["stdout"]
    assert "[rank 0]" in out and "2 rank(s) x batch 4 (global 8)" in out
    assert (runs["w2"]["out"] / "config.yaml").is_file()
    assert not (runs["w2"]["out"] / "logs" / "worker_1.log").read_text().count("step 1/5 loss")
