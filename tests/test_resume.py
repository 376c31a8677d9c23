"""Interrupted + resumed == uninterrupted: same final parameters, same metrics, checkpoints rotated.

The interruption is `train.stop_after` (what a wall-time-limited job does), in the middle of an epoch; the
resumed half runs on a 2-worker CPU cluster with the same global batch, which the data position supports.
"""
import signal
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from launcher import worker
from siglip_reference import converted_siglip_checkpoint
from launcher.backends import dynamic

from training_runs import (
    REPO,
    TINY,
    clean_env,
    finish_training,
    from_checkpoint,
    losses,
    max_param_diff,
    model_params,
    run_training,
    run_trainings,
    start_training,
    train_command,
)

pytestmark = pytest.mark.processes

STEPS = ["train.max_steps=6", "train.batch_size=8", "loss.mode=local", "train.save_every=2",
         "train.keep_last=1"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    overrides = [o for o in TINY if not o.startswith("train.max_steps")] + STEPS
    straight = start_training(base / "straight", overrides)  # side by side with the split run
    first = run_training(base / "split", 1, overrides + ["train.stop_after=4"])
    ckpts_after_first = sorted(p.name for p in (base / "split" / "checkpoints").iterdir())
    second = run_training(base / "split", 2, [o.replace("train.batch_size=8", "train.batch_size=4")
                                               for o in overrides] + ["train.resume=auto"])
    finish_training(base / "straight", straight)
    return {"base": base, "first": first.stdout, "second": second.stdout, "ckpts_after_first": ckpts_after_first,
            "overrides": overrides}


def test_resumed_run_ends_with_the_uninterrupted_parameters(resumed):
    base = resumed["base"]
    straight = model_params(base / "straight" / "checkpoints" / "last.ckpt")
    split = model_params(base / "split" / "checkpoints" / "last.ckpt")
    diff, key = max_param_diff(split, straight)
    assert diff <= 1e-5, f"{key} differs by {diff:.3g} after resuming"
    halfway = model_params(base / "split" / "checkpoints" / "step_00000006.ckpt")
    assert max_param_diff(halfway, split)[0] == 0.0  # last.ckpt is the newest step checkpoint


def test_metrics_read_like_one_run(resumed):
    base = resumed["base"]
    straight, split = losses(base / "straight"), losses(base / "split")
    assert sorted(split) == [1, 2, 3, 4, 5, 6] == sorted(straight)
    assert max(abs(split[s] - straight[s]) for s in straight) <= 1e-5


def test_interruption_saves_and_rotates_checkpoints(resumed):
    assert resumed["ckpts_after_first"] == ["last.ckpt", "step_00000004.ckpt"]
    assert "stopped at step 4 of 6" in resumed["first"]
    assert "steps 4->6 of 6" in resumed["second"] and "resumed from" in resumed["second"]
    names = sorted(p.name for p in (resumed["base"] / "split" / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step_00000006.ckpt"]


def test_rerunning_a_finished_job_only_evaluates_it(resumed, tmp_path):
    """Resumed at its last step, the job compiles no train step, so the compile cache (which holds that step's
    graph) must not be on when the evaluation compiles: it would hand the evaluation the train step's graph."""
    out = tmp_path / "again"
    shutil.copytree(resumed["base"] / "straight", out)
    before = model_params(out / "checkpoints" / "last.ckpt")
    cmd = train_command(resumed["overrides"] + ["train.resume=auto", f"output_dir={out}",
                                                "data.eval={type: shapes, split: val, num_samples: 48}"])
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "steps 6->6 of 6" in proc.stdout and "final zero-shot top-1" in proc.stdout, proc.stdout[-2000:]
    assert max_param_diff(model_params(out / "checkpoints" / "last.ckpt"), before)[0] == 0.0


def test_resume_with_another_global_batch_is_refused(resumed):
    """Data position is counted in global batches: resuming with a different one would skip or repeat data."""
    out = resumed["base"] / "split"
    cmd = train_command([o.replace("train.batch_size=8", "train.batch_size=2") for o in resumed["overrides"]]
                        + ["train.resume=auto", f"output_dir={out}"])
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "global batch of 8" in errors[0] and "1 x 2 = 2" in errors[0], proc.stderr


def test_resume_from_a_file_that_is_not_a_training_checkpoint_is_a_user_error(resumed, tmp_path):
    bogus = tmp_path / "weights.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    cmd = train_command(resumed["overrides"] + [f"train.resume={bogus}", f"output_dir={tmp_path / 'out'}"])
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"train.resume: '{bogus}' is not a readable MindSpore checkpoint" in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.fixture(scope="module")
def gelu_resumed(tmp_path_factory):
    """From a converted open_clip GELU checkpoint with a logit bias (no model name), trained with SigLIP's loss:
    6 steps straight, and stopped after 4 then resumed, one process each (the first half side by side with the
    straight run)."""
    base = tmp_path_factory.mktemp("resume_gelu")
    overrides = from_checkpoint([o for o in TINY if not o.startswith("train.max_steps")] + STEPS + ["loss.type=siglip"],
                                converted_siglip_checkpoint(base / "gelu"))
    first = run_trainings({base / "straight": overrides, base / "split": overrides + ["train.stop_after=4"]})
    second = run_training(base / "split", 1, overrides + ["train.resume=auto"])
    return {"base": base, "first": first[base / "split"].stdout, "second": second.stdout, "overrides": overrides}


def test_run_from_a_converted_gelu_checkpoint_resumes_bit_identically(gelu_resumed):
    base = gelu_resumed["base"]
    assert "stopped at step 4 of 6" in gelu_resumed["first"]
    assert "training custom on 1 rank(s)" in gelu_resumed["second"] and "steps 4->6 of 6" in gelu_resumed["second"]
    straight = model_params(base / "straight" / "checkpoints" / "last.ckpt")
    split = model_params(base / "split" / "checkpoints" / "last.ckpt")
    assert len(split) > 20
    diff, key = max_param_diff(split, straight)
    assert diff == 0.0, f"{key} differs by {diff:.3g} after resuming"
    assert losses(base / "split") == losses(base / "straight")
    gelu_start = model_params(gelu_resumed["base"] / "gelu" / "tiny_siglip.ckpt")
    assert max_param_diff(gelu_start, straight)[0] > 0  # it trained
    assert "logit_bias" in split and split["logit_bias"] != gelu_start["logit_bias"]  # SigLIP's bias, resumed too


def test_resuming_with_another_architecture_is_refused_in_one_line(gelu_resumed):
    """The GELU run's checkpoint under clip_tiny (QuickGELU, the same shapes): refused before any step, naming
    the field that differs, nothing written."""
    out = gelu_resumed["base"] / "split"
    ckpt = out / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    overrides = [o for o in gelu_resumed["overrides"] if not o.startswith(("model.checkpoint=", "loss.type="))]
    cmd = train_command(overrides + ["model.name=clip_tiny", f"train.resume={ckpt}", f"output_dir={out}"])
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert (f"train.resume: '{ckpt}' was trained as custom (activation 'gelu'); this run builds clip_tiny "
            f"(activation 'quick_gelu')") in errors[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def _worker(launcher: "psutil.Process", rank: int):
    for child in launcher.children(recursive=True):
        try:
            env = child.environ()
        except psutil.Error:
            continue
        if env.get(dynamic.MS_ROLE) == dynamic.WORKER and env.get(dynamic.MS_NODE_ID) == str(rank):
            return child
    return None


def test_killed_worker_restarts_and_resumes_to_the_uninterrupted_parameters(tmp_path):
    """The launcher's --max-restarts with train.resume=auto: SIGKILL rank 1 after the first checkpoint; the
    restarted job resumes from it and ends exactly where the same job ends without the crash (on one card
    with the same global batch: the equivalence tests show that is the same)."""
    overrides = [o for o in TINY if not o.startswith(("train.max_steps", "train.resume"))] + [
        "train.max_steps=12", "train.save_every=4", "train.keep_last=1", "train.resume=auto"]
    run_training(tmp_path / "straight", 1, overrides + ["train.batch_size=8"])

    out = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", "2", "--max-restarts", "1",
           "--log-dir", str(out / "logs"), "--no-chdir", "--"] + train_command(
        overrides + ["train.batch_size=4", f"output_dir={out}"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    launcher = psutil.Process(proc.pid)
    first_checkpoint = out / "checkpoints" / "step_00000004.ckpt"
    deadline = time.monotonic() + 240
    while not first_checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = _worker(launcher, 1)
    assert first_checkpoint.exists() and victim is not None, "the job never reached its first checkpoint"
    victim.kill()
    output, _ = proc.communicate(timeout=300)

    assert proc.returncode == 0, output[-3000:]
    assert "rank 1" in output and "restart" in output.lower(), output[-3000:]
    resumed_log = (out / "logs" / "attempt_1" / "worker_0.log").read_text()
    assert "resumed from" in resumed_log
    diff, key = max_param_diff(model_params(out / "checkpoints" / "last.ckpt"),
                               model_params(tmp_path / "straight" / "checkpoints" / "last.ckpt"))
    assert diff <= 1e-5, f"{key} differs by {diff:.3g} after a crash and restart"


def test_sigterm_to_the_launcher_saves_at_a_step_boundary_and_resume_equals_uninterrupted(resumed, tmp_path):
    """Pre-emption: SIGTERM to the launcher mid-run; every worker stops at the same step with a checkpoint,
    exit code 75 reported as "pre-empted, resumable"; `train.resume: auto` then ends where the straight run
    ends."""
    out = tmp_path / "preempted"
    overrides = [o.replace("train.batch_size=8", "train.batch_size=4") for o in resumed["overrides"]]
    cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", "2", "--log-dir", str(out / "logs"),
           "--no-chdir", "--"] + train_command(overrides + [f"output_dir={out}"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ((out / "metrics.jsonl").exists() and '"loss"' in (out / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == worker.PREEMPTED_EXIT_CODE, err
    assert "pre-empted, resumable" in err
    stopped = max(losses(out))
    assert 1 <= stopped < 6 and (out / "checkpoints" / f"step_{stopped:08d}.ckpt").exists()
    run_training(out, 2, overrides + ["train.resume=auto"])
    base = resumed["base"]
    diff, key = max_param_diff(model_params(out / "checkpoints" / "last.ckpt"),
                               model_params(base / "straight" / "checkpoints" / "last.ckpt"))
    assert diff <= 1e-5, f"{key} differs by {diff:.3g} after a pre-emption"
    straight, again = losses(base / "straight"), losses(out)
    assert sorted(again) == sorted(straight) and max(abs(again[s] - straight[s]) for s in straight) <= 1e-5
