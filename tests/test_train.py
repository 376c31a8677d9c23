"""The training job's parts (schedule, weight-decay groups, checkpoints, metrics, progress) and one real
single-card run in PYNATIVE mode (what scripts/run_standalone.sh uses) checking every output file."""
import io
import math
import subprocess
import sys

import numpy as np
import pytest

from clip.train import checkpoint, runlog
from launcher.errors import UserError

from training_runs import REPO, clean_env, run_training, tensorboard_scalars, train_command

# ---------------------------------------------------------------- pure parts

def test_weight_decay_only_on_matrices():
    from clip.train.optim import decays

    assert decays("visual.transformer.resblocks.0.attn.in_proj_weight", 2)
    assert decays("token_embedding.weight", 2) and decays("visual.conv1.weight", 4)
    assert not decays("visual.ln_pre.weight", 1) and not decays("ln_final.bias", 1)
    assert not decays("logit_scale", 0) and not decays("visual.class_embedding", 1)


def test_checkpoint_names_and_pruning():
    assert checkpoint.step_of("step_00000012.ckpt") == 12
    assert checkpoint.step_of("last.ckpt") is None and checkpoint.step_of(".tmp_1_step_00000003.ckpt") is None
    names = ["last.ckpt", "step_00000010.ckpt", "step_00000002.ckpt", "step_00000004.ckpt", "notes.txt"]
    assert checkpoint.to_prune(names, 2) == ["step_00000002.ckpt"]
    assert checkpoint.to_prune(names, 5) == []


def test_resume_path(tmp_path):
    assert checkpoint.resume_path("none", str(tmp_path)) is None
    assert checkpoint.resume_path("auto", str(tmp_path)) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert checkpoint.resume_path("auto", str(tmp_path)) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint.resume_path("/some/file.ckpt", str(tmp_path)) == "/some/file.ckpt"


def test_metrics_log_drops_lines_after_the_resumed_step(tmp_path):
    log = runlog.MetricsLog(str(tmp_path), None)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    log.write({"step": 2, "eval_top1": 50.0})
    log.close()
    log = runlog.MetricsLog(str(tmp_path), 2)
    log.write({"step": 3, "loss": 0.25})
    log.close()
    rows = runlog.read(str(tmp_path / runlog.METRICS))
    assert [r["step"] for r in rows] == [1, 2, 2, 3] and rows[-1]["loss"] == 0.25
    runlog.MetricsLog(str(tmp_path), None).close()  # a fresh run (resume: none) starts an empty file
    assert runlog.read(str(tmp_path / runlog.METRICS)) == []


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise():
    record = {"step": 3, "loss": 1.5, "lr": 1e-3, "logit_scale": 2.6, "grad_norm": 0.5, "samples_per_s": 40.0}
    plain, tty = io.StringIO(), Terminal()
    for stream in (plain, tty):
        progress = runlog.Progress(10, 2, enabled=True, stream=stream)
        progress.step(record)
        progress.close()
    assert plain.getvalue() == "step 3/10 loss 1.5000 lr 0.001 logit_scale 2.600 grad_norm 0.5 40.0 samples/s\n"
    assert "3/10" in tty.getvalue() and "|" in tty.getvalue() and "loss=1.5000" in tty.getvalue()
    silent = io.StringIO()
    runlog.Progress(10, 0, enabled=False, stream=silent).step(record)
    assert silent.getvalue() == ""


def test_checkpoint_save_rotate_load_restore(tmp_path):
    import mindspore as ms
    from mindspore import Parameter, Tensor

    params = [Parameter(Tensor(np.full((2, 3), 1.0, np.float32)), name="w"),
              Parameter(Tensor(np.zeros(3, np.float32)), name="adam_m.w")]
    for step in (2, 4, 6):
        params[0].set_data(Tensor(np.full((2, 3), float(step), np.float32)))
        checkpoint.save(params, str(tmp_path), {"step": step, "epoch": step // 4, "step_in_epoch": step % 4,
                                                "global_batch": 8, "seed": 1}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step_00000004.ckpt", "step_00000006.ckpt"]  # no temporary files left
    stored, meta = checkpoint.load(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert meta == {"step": 6, "epoch": 1, "step_in_epoch": 2, "global_batch": 8, "seed": 1, "precision": "fp32",
                    "architecture": None}  # saved without one, as files written before checkpoints carried it
    params[0].set_data(Tensor(np.zeros((2, 3), np.float32)))
    checkpoint.restore(params, stored, "last.ckpt")
    assert np.all(params[0].asnumpy() == 6.0)
    wrong = [Parameter(Tensor(np.zeros((3, 2), np.float32)), name="w")]
    with pytest.raises(UserError, match=r"parameter 'w' has shape \(2, 3\), the model expects \(3, 2\)"):
        checkpoint.restore(wrong, stored, "last.ckpt")
    with pytest.raises(UserError, match="has no parameter 'other'"):
        checkpoint.restore([Parameter(Tensor(np.zeros(1, np.float32)), name="other")], stored, "last.ckpt")
    ms.save_checkpoint([{"name": "w", "data": params[0]}], str(tmp_path / "weights_only.ckpt"))
    with pytest.raises(UserError, match="is not a training checkpoint"):
        checkpoint.load(str(tmp_path / "weights_only.ckpt"))


def test_plot_writes_a_png(tmp_path):
    rows = [{"step": s, "loss": 3.0 / s, "lr": 1e-3, "logit_scale": 2.6, "samples_per_s": 10.0} for s in (1, 2, 3)]
    rows.append({"step": 3, "eval_top1": 40.0, "eval_top5": 80.0, "eval_n": 10, "eval_classes": 24})
    out = tmp_path / "metrics.png"
    runlog.plot(rows, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


# ---------------------------------------------------------------- the command line

@pytest.mark.processes
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(train_command(["train.lr=fast", f"output_dir={out}"]), cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: config: train.lr: expected a number, got 'fast' (from --set train.lr=fast)"
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    proc = run_training(out, 1, ["model.name=clip_tiny", "data.train.num_samples=32", "data.eval.num_samples=48",
                                 "train.batch_size=8", "train.max_steps=4", "train.eval_every=2",
                                 "train.save_every=2", "train.mode=pynative", "train.lr=1e-3",
                                 "train.resume=auto"])
    return out, proc.stdout


@pytest.mark.processes
def test_single_card_run_writes_every_output(single_run):
    out, stdout = single_run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "metrics.png",
                                                      "tensorboard"]
    from clip.config import load_config
    cfg = load_config(str(out / "config.yaml"))
    assert cfg.train.mode == "pynative" and cfg.output_dir == str(out) and cfg.data.eval.num_samples == 48
    rows = runlog.read(str(out / "metrics.jsonl"))
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_top1" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4] and [r["step"] for r in evals] == [2, 4]
    for r in train_rows:
        assert set(r) == {"step", "loss", "lr", "logit_scale", "grad_norm", "samples_per_s"}
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        assert math.isfinite(r["loss"]) and r["samples_per_s"] > 0 and 0 <= r["logit_scale"] <= math.log(100)
    assert train_rows[0]["lr"] == pytest.approx(1e-3)
    assert all(r["eval_n"] == 48 and r["eval_classes"] == 24 for r in evals)
    # plain lines (stdout is not a terminal) and rank 0's final accuracy
    assert "step 4/4 loss" in stdout and "eval step 2/4: zero-shot top-1" in stdout
    final = [line for line in stdout.splitlines() if line.startswith("final zero-shot top-1")]
    assert len(final) == 1 and f"{evals[-1]['eval_top1']:.2f}%" in final[0] and "24 classes" in final[0]


@pytest.mark.processes
def test_tensorboard_events_hold_every_metric_of_the_run(single_run):
    """The event files read back (framing, checksums, protos) give metrics.jsonl's numbers at its steps."""
    out, _ = single_run
    scalars = tensorboard_scalars(out / "tensorboard")
    rows = runlog.read(str(out / "metrics.jsonl"))
    expected = {runlog.tensorboard_tag(k): {} for r in rows for k in r if k not in ("step", "eval_n", "eval_classes")}
    for r in rows:
        for key, value in r.items():
            if runlog.tensorboard_tag(key) in expected:
                expected[runlog.tensorboard_tag(key)][r["step"]] = value
    assert {"train/loss", "train/lr", "train/grad_norm", "train/logit_scale", "train/samples_per_s",
            "eval/top1", "eval/top5"} <= set(expected)
    assert set(scalars) == set(expected)
    for tag, by_step in expected.items():
        assert scalars[tag] == pytest.approx(by_step, rel=1e-6), tag  # float32 in the event file
    assert sorted(scalars["eval/top1"]) == [2, 4] and sorted(scalars["train/loss"]) == [1, 2, 3, 4]


def test_tensorboard_groups_and_switch(tmp_path):
    """Learning-rate groups appear only when rates differ; the fp16 loss scale and a logit bias are scalars too;
    train.tensorboard: false is a valid key."""
    from clip.config import load_config

    same = {"visual.conv1.weight": 1.0, "token_embedding.weight": 1.0, "logit_scale": 1.0}
    assert runlog.lr_groups(same) == {}
    decayed = {"visual.conv1.weight": 0.25, "visual.transformer.resblocks.0.mlp.c_fc.weight": 0.5,
               "visual.proj": 1.0, "transformer.resblocks.1.attn.in_proj_weight": 0.1, "logit_scale": 1.0}
    assert runlog.lr_groups(decayed) == {"image.embed": 0.25, "image.block0": 0.5, "image.head": 1.0,
                                         "text.block1": 0.1, "other": 1.0}
    board = runlog.TensorBoard(str(tmp_path), None, {"image.embed": 0.5})
    board.write({"step": 3, "loss": 2.0, "lr": 1e-3, "loss_scale": 1024.0, "skipped_steps": 1}, {"logit_bias": -10.0})
    board.write({"step": 3, "eval_top1": 40.0, "eval_n": 10, "ema_eval_top1": 41.0})
    board.close()
    assert tensorboard_scalars(tmp_path / "tensorboard") == {
        "train/loss": {3: 2.0}, "train/lr": {3: pytest.approx(1e-3)}, "train/loss_scale": {3: 1024.0},
        "train/skipped_steps": {3: 1.0}, "train/logit_bias": {3: -10.0}, "train/lr/image.embed": {3: pytest.approx(5e-4)},
        "eval/top1": {3: 40.0}, "eval/ema_top1": {3: 41.0}}
    assert load_config(None, ["train.tensorboard=false"]).train.tensorboard is False


@pytest.mark.processes
def test_training_checkpoint_loads_as_model_weights(single_run):
    """last.ckpt keeps OpenAI parameter names, so evaluation and prediction can load it directly."""
    import mindspore as ms

    from clip.model import create_model

    out, _ = single_run
    ckpt = out / "checkpoints" / "last.ckpt"
    model = create_model("clip_tiny", checkpoint=str(ckpt))
    stored = ms.load_checkpoint(str(ckpt))
    for name, param in model.parameters_and_names():
        assert np.array_equal(param.asnumpy(), stored[param.name].asnumpy()), name
    assert int(stored["global_step"].asnumpy()[0]) == 4 and int(stored["step"].asnumpy()) == 4


@pytest.mark.processes
def test_tensorboard_writes_events_without_importing_torch(tmp_path):
    """tensorboardX would import torch when it is installed (it is, in the test environment): seconds of every
    run's start-up spent on a library the trainer never uses."""
    code = ("import sys; from clip.train import runlog; b = runlog.TensorBoard(sys.argv[1], None); "
            "b.write({'step': 1, 'loss': 2.0}); b.close(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=clean_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert tensorboard_scalars(tmp_path / "tensorboard") == {"train/loss": {1: 2.0}}
    import torch  # noqa: F401  (the package is there: the hiding above is what kept it out)
