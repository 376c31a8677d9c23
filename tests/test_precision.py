"""fp16 training with dynamic loss scaling, on real CPU clusters: W=2 x B=4 trains like W=1 x B=8, forced
overflows are skipped on every rank without touching any state, too many in a row end the run with one line,
and an interrupted fp16 run resumes exactly (parameters and loss scale).

The overflow is forced with a large first loss scale (2^18): clip_tiny's float16 gradients overflow at 2^16
and above at the start here (the default scale skips the first step too), so the first steps are skipped
while the scale halves, then training goes on. W=1 and W=2 differ in float16 rounding (each rank's backward
sees a loss over its own rows), and AdamW's first steps turn rounding differences in tiny gradients into
steps of size lr, so the fp16 equivalence runs use a small learning rate (2e-4) to stay within 1e-3.
"""
import math
import subprocess

import numpy as np
import pytest

from clip.train.precision import check_resume, model_dtype
from launcher.errors import UserError

from training_runs import (
    REPO,
    TINY,
    clean_env,
    finish_training,
    losses,
    max_param_diff,
    metric,
    model_params,
    run_training,
    start_training,
    stored_arrays,
    train_command,
)

# clip_tiny rather than TINY's one-block model: its float16 gradients are the ones described above
FP16 = [o for o in TINY if not o.startswith(("train.max_steps", "model.name"))] + [
    "model.name=clip_tiny", "train.precision=fp16", "train.max_steps=6", "train.save_every=1", "train.keep_last=10"]
FIRST_SCALE = 18
OVERFLOW = f"train.loss_scale_init={2 ** FIRST_SCALE}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fp16")
    small_lr = [o for o in FP16 if not o.startswith("train.lr")] + ["train.lr=2e-4"]
    w1 = start_training(base / "w1", small_lr + ["train.batch_size=8"])  # side by side with the clusters
    run_training(base / "w2", 2, small_lr + ["train.batch_size=4"])
    run_training(base / "overflow", 2, FP16 + ["train.batch_size=4", OVERFLOW])
    finish_training(base / "w1", w1)
    return base


@pytest.fixture(scope="module")
def resumed(runs):
    """The overflow run again, interrupted after step 3 and resumed (same 2 workers)."""
    overrides = FP16 + ["train.batch_size=4", OVERFLOW]
    first = run_training(runs / "split", 2, overrides + ["train.stop_after=3"])
    run_training(runs / "split", 2, overrides + ["train.resume=auto"])
    return runs, first.stdout


@pytest.mark.processes
def test_fp16_on_two_workers_trains_like_one(runs):
    base = runs
    ref, got = losses(base / "w1"), losses(base / "w2")
    assert sorted(ref) == sorted(got) == [1, 2, 3, 4, 5, 6]
    worst = max(abs(got[s] - ref[s]) / ref[s] for s in ref)
    assert worst <= 1e-3, f"fp16 per-step loss differs by {worst:.3g} (relative) between W=2xB=4 and W=1xB=8"
    assert metric(base / "w1", "skipped_steps") == metric(base / "w2", "skipped_steps")
    assert metric(base / "w1", "loss_scale") == metric(base / "w2", "loss_scale")
    diff, key = max_param_diff(model_params(base / "w2" / "checkpoints" / "last.ckpt"),
                               model_params(base / "w1" / "checkpoints" / "last.ckpt"))
    assert diff <= 1e-3, f"{key} differs by {diff:.3g}"


@pytest.mark.processes
def test_forced_overflow_is_skipped_on_every_rank_and_training_goes_on(runs):
    import mindspore as ms

    from clip.model import create_model

    out = runs / "overflow"
    skipped, scale, norm = metric(out, "skipped_steps"), metric(out, "loss_scale"), metric(out, "grad_norm")
    k = skipped[6]
    assert skipped[1] == 1 and 1 <= k <= 4, f"skipped steps: {skipped}"  # some overflow, most steps train
    previous_skipped, previous_scale = 0, 2.0 ** FIRST_SCALE
    for step in range(1, 7):  # GradScaler's rule, step by step: halve on a skipped step, else keep
        was_skipped = skipped[step] == previous_skipped + 1
        assert was_skipped or skipped[step] == previous_skipped
        assert scale[step] == (max(previous_scale / 2, 1.0) if was_skipped else previous_scale)
        assert math.isfinite(norm[step]) != was_skipped  # skipped exactly when the all-reduced gradient was not
        previous_skipped, previous_scale = skipped[step], scale[step]
    ms.set_seed(7)
    initial = {p.name: p.asnumpy() for p in create_model("clip_tiny").get_parameters()}
    after_skip = stored_arrays(out / "checkpoints" / "step_00000001.ckpt")
    assert all(np.array_equal(after_skip[name], value) for name, value in initial.items())
    moments = [v for name, v in after_skip.items() if name.startswith("adam_")]
    assert len(moments) == 2 * len(initial) and not any(np.any(v) for v in moments)
    assert int(after_skip["global_step"][0]) == 0
    final = stored_arrays(out / "checkpoints" / "last.ckpt")
    assert int(final["global_step"][0]) == 6 - k and int(final["skipped_steps"]) == k
    assert max_param_diff({n: final[n] for n in initial}, initial)[0] > 1e-4  # the later steps trained
    # both ranks skipped the same steps: the run checks at its end that their parameters are identical
    assert (out / "logs" / "worker_1.log").is_file()


@pytest.mark.processes
def test_fp16_resume_equals_the_uninterrupted_run(resumed):
    base, first = resumed
    assert "stopped at step 3 of 6" in first
    straight = stored_arrays(base / "overflow" / "checkpoints" / "last.ckpt")
    split = stored_arrays(base / "split" / "checkpoints" / "last.ckpt")
    assert straight.keys() == split.keys()
    diff = max(float(np.max(np.abs(split[k] - straight[k]))) for k in straight)
    assert diff <= 1e-6, f"resumed fp16 run differs by {diff:.3g}"
    assert float(split["loss_scale"]) == float(straight["loss_scale"]) < 2.0 ** FIRST_SCALE
    assert int(split["skipped_steps"]) == int(straight["skipped_steps"]) >= 1
    split_losses, straight_losses = losses(base / "split"), losses(base / "overflow")
    assert sorted(split_losses) == sorted(straight_losses)
    assert all(abs(split_losses[s] - straight_losses[s]) <= 1e-6 * straight_losses[s] for s in straight_losses)


@pytest.mark.processes
def test_resume_under_another_precision_is_refused(runs):
    out = runs / "overflow"
    cmd = train_command(FP16 + ["train.batch_size=8", "train.precision=fp32", "train.resume=auto",
                                f"output_dir={out}"])
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.precision fp16" in errors[0] and "resume_reset_scaler" in errors[0]


@pytest.mark.processes
def test_too_many_skipped_steps_in_a_row_end_the_run_with_one_line(tmp_path):
    out = tmp_path / "diverged"
    cmd = train_command(FP16 + ["train.batch_size=8", "train.loss_scale_init=1e38", "train.max_skipped_steps=2",
                                f"output_dir={out}"])
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "train.max_skipped_steps: 3 steps in a row up to step 3" in errors[0] and "loss scale now" in errors[0]


def test_precision_picks_the_tower_dtype_and_old_model_dtype_configs_name_the_new_key():
    assert model_dtype("fp16", "float32") == "float16" and model_dtype("fp16", "float16") == "float16"
    assert model_dtype("fp32", "float32") == "float32" and model_dtype("bf16", "float32") == "bfloat16"
    with pytest.raises(UserError, match="model.dtype: float16 no longer sets the training precision; use "
                                        "train.precision: fp16"):
        model_dtype("fp32", "float16")
    check_resume("fp16", "fp16", False, "x.ckpt")
    check_resume("fp16", "fp32", True, "x.ckpt")
    with pytest.raises(UserError, match="trained with train.precision fp16, this run uses fp32"):
        check_resume("fp16", "fp32", False, "x.ckpt")
