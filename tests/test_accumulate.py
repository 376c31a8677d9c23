"""Gradient accumulation and activation recompute: settings checked up front, recompute leaves gradients
unchanged (2 blocks per tower, compiled: ViT-B/32 widths in fp32, clip_tiny's in fp16), a K > 1 run resumes exactly. The equivalence of
(W, B, K) with (1, W*B*K, 1) is in tests/test_equivalence.py, next to the runs it compares with."""
import subprocess
from dataclasses import replace

import numpy as np
import pytest

from clip.config import load_config
from clip.train.accumulate import backward_order
from clip.train.recompute import blocks_to_recompute
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
    run_trainings,
    start_training,
    train_command,
)


def test_bad_accumulation_and_recompute_settings_are_one_line_errors():
    with pytest.raises(UserError, match=r"train.accum_steps: 0 must be at least 1"):
        load_config(None, ["train.accum_steps=0"])
    with pytest.raises(UserError, match=r"train.accum_mode: 'sum' is not one of contrastive, plain"):
        load_config(None, ["train.accum_mode=sum"])
    with pytest.raises(UserError, match=r"model.recompute: 13 blocks: clip_vit_b_32 has 12 vision and 12 text "
                                        r"blocks; expected true, false or 0..12"):
        load_config(None, ["model.name=clip_vit_b_32", "model.recompute=13"])
    assert load_config(None, ["model.recompute=true"]).model.recompute is True
    assert load_config(None, ["model.name=clip_vit_l_14", "model.recompute=20"]).model.recompute == 20
    assert [blocks_to_recompute(s, 12) for s in (True, False, 0, 5, 12)] == [12, 0, 0, 5, 12]
    assert blocks_to_recompute(20, 12) == 12  # ViT-L/14's text tower has 12 of the 24 blocks asked for


def block(prefix, i):
    return [f"{prefix}resblocks.{i}.{n}" for n in ("ln_1.weight", "attn.in_proj_weight", "attn.out_proj.weight",
                                                    "ln_2.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")]


def test_micro_batch_gradients_are_summed_in_the_order_the_backward_pass_makes_them():
    # the model's parameter order (clip.model): text heads first, then the image tower, then the text tower
    names = (["positional_embedding", "text_projection", "logit_scale", "visual.class_embedding",
              "visual.positional_embedding", "visual.proj", "visual.conv1.weight", "visual.ln_pre.weight"]
             + block("visual.transformer.", 0) + block("visual.transformer.", 1) + ["visual.ln_post.weight"]
             + block("transformer.", 0) + block("transformer.", 1) + ["token_embedding.weight", "ln_final.weight"])
    order = [names[i] for i in backward_order(names)]
    assert sorted(order) == sorted(names)
    assert order[:2] == ["visual.ln_post.weight", "visual.proj"]  # the image head, where the backward starts
    assert order[2:8] == block("visual.transformer.", 1)[::-1]  # the last block, from its last weight
    assert order[8:14] == block("visual.transformer.", 0)[::-1]
    assert set(order[14:18]) == {"visual.class_embedding", "visual.positional_embedding", "visual.conv1.weight",
                                 "visual.ln_pre.weight"}
    assert set(order[18:21]) == {"ln_final.weight", "text_projection", "logit_scale"}  # then the text tower
    assert order[21:33] == block("transformer.", 1)[::-1] + block("transformer.", 0)[::-1]
    assert set(order[33:]) == {"positional_embedding", "token_embedding.weight"}


def test_each_tower_re_encodes_in_its_own_graph_and_every_weight_is_summed_once():
    """The contrastive step back-propagates the image and the text tower separately (one tower's activations
    at a time); a weight in neither graph would never be trained, one in both would be counted twice."""
    from clip.loss.contrastive import ContrastiveLoss
    from clip.model import create_model
    from clip.parallel.distributed import grad_reducer
    from clip.train import NetWithLoss
    from clip.train.accumulate import AccumulatingTrainStep
    from clip.train.optim import build_optimizer

    model = create_model("clip_tiny")
    optimizer = build_optimizer(model, "adamw", 0.2, 0.9, 0.98, 1e-6)
    step = AccumulatingTrainStep(NetWithLoss(model, ContrastiveLoss("local")), optimizer,
                                 grad_reducer(optimizer.parameters), 2)
    image = [w.name for w in step.image_grad.weights]
    text = [w.name for w in step.text_grad.weights]
    assert image and all(name.startswith("visual.") for name in image)
    assert "logit_scale" in text and not any(name.startswith("visual.") for name in text)
    assert sorted(image + text) == sorted(w.name for w in model.trainable_params())
    for graph in (step.image_grad, step.text_grad):  # each weight's gradient goes to its own sum
        assert [s.name for s in graph.grad_sum] == [f"grad_sum.{w.name}" for w in graph.weights]


@pytest.mark.processes
def test_a_global_batch_the_dataset_cannot_fill_is_refused(tmp_path):
    cmd = train_command(TINY + ["train.batch_size=4", "train.accum_steps=8", f"output_dir={tmp_path / 'out'}"])
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data.train: 24 samples are fewer than one global batch of 32 (train.batch_size 4 x "
                      "1 ranks x train.accum_steps 8)"], proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("preset, dtype, tolerance", [("clip_vit_b_32", "float32", 1e-6), ("clip_tiny", "float16", 1e-3)])
def test_recompute_leaves_the_gradients_unchanged(preset, dtype, tolerance):
    import mindspore as ms
    from mindspore import nn, ops

    from clip.loss.contrastive import ContrastiveLoss
    from clip.model import create_model
    from clip.model.architectures import get_config
    from clip.train import NetWithLoss
    from clip.train.recompute import recompute_blocks

    config = replace(get_config(preset), vision_layers=2, text_layers=2)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((2, 3, config.image_size, config.image_size)).astype(np.float32))
    tokens = ms.Tensor(rng.integers(1, config.vocab_size, (2, config.context_length)).astype(np.int32))

    class Grads(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net, self.weights = net, net.trainable_params()
            self.grad = ops.GradOperation(get_by_list=True)

        def construct(self, x, t):
            return self.grad(self.net, self.weights)(x, t)

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        results = []
        for recompute in (False, True):
            ms.set_seed(0)
            model = create_model(config, dtype=dtype)
            assert recompute_blocks(model, recompute) == (4 if recompute else 0)
            results.append([g.asnumpy() for g in Grads(NetWithLoss(model, ContrastiveLoss("local")))(images, tokens)])
    finally:
        ms.set_context(mode=previous)
    plain, recomputed = results
    assert len(plain) == len(recomputed) > 20
    worst = max(float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(a))), 1e-12) for a, b in zip(plain, recomputed))
    assert worst <= tolerance, f"{dtype} gradients differ by {worst:.3g} (relative) with recompute"


@pytest.mark.processes
def test_a_run_with_accumulation_resumes_exactly(tmp_path):
    overrides = [o for o in TINY if not o.startswith("train.resume")] + [
        "train.batch_size=2", "train.accum_steps=4", "train.save_every=2", "train.resume=auto"]
    straight = start_training(tmp_path / "straight", overrides)  # side by side with the split run
    first = run_training(tmp_path / "split", 1, overrides + ["train.stop_after=2"])
    assert "stopped at step 2 of 5" in first.stdout
    second = run_training(tmp_path / "split", 1, overrides)
    finish_training(tmp_path / "straight", straight)
    assert "steps 2->5 of 5" in second.stdout and "x 4 micro-batches (global 8)" in second.stdout
    diff, key = max_param_diff(model_params(tmp_path / "split" / "checkpoints" / "last.ckpt"),
                               model_params(tmp_path / "straight" / "checkpoints" / "last.ckpt"))
    assert diff <= 1e-6, f"{key} differs by {diff:.3g} after resuming"
    straight, split = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert sorted(split) == [1, 2, 3, 4, 5] and all(abs(split[s] - straight[s]) <= 1e-6 for s in straight)


@pytest.mark.processes
def test_accumulation_in_fp16_and_in_pynative_trains_like_the_plain_step(tmp_path):
    """fp16: (W, B, K) = (1, 2, 4) against (1, 8, 1), both with dynamic loss scaling, within test_precision's fp16
    tolerance, with the same skipped steps and loss scales (the scaler sees the summed gradient). PyNative: the
    same K = 4 step run op by op equals it compiled."""
    base = [o for o in TINY if not o.startswith("train.lr")] + ["train.lr=2e-4"]
    # clip_tiny, as test_precision's fp16 runs (the K = 1 run is the same graph as its one-card run)
    fp16 = [o for o in base if not o.startswith("model.name")] + ["model.name=clip_tiny", "train.precision=fp16"]
    accumulated = base + ["train.batch_size=2", "train.accum_steps=4"]
    run_trainings({tmp_path / "fp16_k1": fp16 + ["train.batch_size=8"],
                   tmp_path / "fp16_k4": fp16 + ["train.batch_size=2", "train.accum_steps=4"],
                   tmp_path / "graph": accumulated, tmp_path / "pynative": accumulated + ["train.mode=pynative"]})
    ref, got = losses(tmp_path / "fp16_k1"), losses(tmp_path / "fp16_k4")
    assert sorted(ref) == sorted(got) == [1, 2, 3, 4, 5]
    worst = max(abs(got[s] - ref[s]) / ref[s] for s in ref)
    assert worst <= 1e-3, f"fp16 K=4 per-step loss differs by {worst:.3g} (relative) from K=1"
    for key in ("skipped_steps", "loss_scale"):
        assert metric(tmp_path / "fp16_k1", key) == metric(tmp_path / "fp16_k4", key)
    graph, pynative = losses(tmp_path / "graph"), losses(tmp_path / "pynative")
    assert sorted(pynative) == [1, 2, 3, 4, 5]
    assert max(abs(pynative[s] - graph[s]) for s in graph) <= 1e-6
    diff, key = max_param_diff(model_params(tmp_path / "pynative" / "checkpoints" / "last.ckpt"),
                               model_params(tmp_path / "graph" / "checkpoints" / "last.ckpt"))
    assert diff <= 1e-5, f"{key} differs by {diff:.3g} between PyNative and graph mode"
