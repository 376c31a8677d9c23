"""Fine-tuning runs: a small model trained on the built-in shapes, then fine-tuned LiT-style on another captioned
set (the shapes' colours named in French, tests/finetune_data.py) with every fine-tuning option on at once:
the image tower locked but its projection (model.lock_image_unlocked_groups 1), the text tower locked in its
embeddings only (model.lock_text_unlocked_layers 3), layer-wise lr decay, per-tower rates and an EMA.

One fine-tuning run straight through, the same stopped and resumed (one process each, so bit-identical), and
the same on a 2-worker cluster at the same global batch (within float noise). The straight run must reach a
zero-shot accuracy on the French class names that the shapes-trained model does not have.
"""
import json

import numpy as np
import pytest

from finetune_data import folder_overrides, write_colour_folder, write_mini_config
from training_runs import (
    TOL,
    finish_training,
    function_part,
    losses,
    run_training,
    run_trainings,
    start_training,
    stored_arrays,
)

pytestmark = pytest.mark.processes

PRETRAIN = ["data.train.type=shapes", "data.train.num_samples=640", "data.eval=null", "train.max_steps=20",
            "train.batch_size=32", "train.lr=2e-3", "train.warmup_steps=3", "train.weight_decay=0.1",
            "train.seed=3", "train.num_workers=1", "train.resume=none", "train.log_every=10",
            "train.tensorboard=false"]
FINETUNE = ["train.max_steps=24", "train.lr=2e-3", "train.warmup_steps=2", "train.weight_decay=0.1",
            "train.seed=4", "train.num_workers=1", "train.resume=none", "train.log_every=4", "train.tensorboard=false",
            "model.lock_image=true", "model.lock_image_unlocked_groups=1",
            "model.lock_text=true", "model.lock_text_unlocked_layers=3",
            "train.layer_decay=0.7", "train.lr_image=1e-3", "train.lr_text=5e-3", "train.ema_decay=0.7"]
# what the locks leave trainable: the image projection, and everything of the text tower but its embeddings
LOCKED = ("visual.conv1.", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.",
          "visual.transformer.", "visual.ln_post.", "token_embedding.", "positional_embedding")
STOP = 16


def is_weight(name: str) -> bool:
    return not name.startswith(("adam_", "ema.", "global_step")) and name not in (
        "step", "epoch", "step_in_epoch", "global_batch", "seed")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("finetune")
    folder = write_colour_folder(base / "colours")
    model = write_mini_config(base / "mini.json")
    run_training(base / "pretrain", 1, PRETRAIN + [f"model.name={model}"])
    start = base / "pretrain" / "checkpoints" / "last.ckpt"
    overrides = FINETUNE + folder_overrides(folder) + [f"model.checkpoint={start}"]
    # two single processes side by side, then the resumed half beside the cluster: two cores kept busy
    done = run_trainings({base / "straight": overrides + ["train.batch_size=16"],
                          base / "split": overrides + ["train.batch_size=16", f"train.stop_after={STOP}"]})
    done = {path.name: proc for path, proc in done.items()}
    second = start_training(base / "split", overrides + ["train.batch_size=16", "train.resume=auto"])
    try:
        run_training(base / "w2", 2, overrides + ["train.batch_size=8"])
        resumed = finish_training(base / "split", second)
    finally:
        if second.poll() is None:
            second.kill()
    return {"base": base, "start": stored_arrays(start), "folder": folder, "first": done["split"].stdout,
            "second": resumed.stdout, "straight_out": done["straight"].stdout,
            **{name: stored_arrays(base / name / "checkpoints" / "last.ckpt") for name in ("straight", "split", "w2")}}


def evals(out) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval_top1" in r][-1]


def test_locked_parameters_stay_bit_identical_and_have_no_optimiser_state(runs):
    start, end = runs["start"], runs["straight"]
    weights = [k for k in start if is_weight(k)]
    locked = [k for k in weights if k.startswith(LOCKED)]
    trainable = [k for k in weights if not k.startswith(LOCKED)]
    assert len(locked) > 20 and "visual.proj" in trainable and "transformer.resblocks.0.attn.in_proj_weight" in trainable
    for k in locked:
        assert np.array_equal(end[k], start[k]), f"locked {k} changed"
        assert f"adam_m.{k}" not in end and f"adam_v.{k}" not in end and f"ema.{k}" not in end
    for k in trainable:
        assert not np.array_equal(end[k], start[k]), f"trainable {k} did not change"
        assert f"adam_m.{k}" in end and f"adam_v.{k}" in end and f"ema.{k}" in end
    assert f"{len(locked)} locked parameters, EMA" in runs["straight_out"]


def test_lit_learns_class_names_the_pretrained_text_tower_never_saw(runs):
    from clip.data.base import DatasetConfig
    from clip.eval.zeroshot import zero_shot_eval
    from clip.model import create_model
    from finetune_data import TEMPLATES

    held_out = DatasetConfig(type="imagefolder", path=str(runs["folder"]), split="val", templates=TEMPLATES)
    before = zero_shot_eval(create_model(None, checkpoint=str(runs["base"] / "pretrain" / "checkpoints" / "last.ckpt")),
                            held_out, 32, 48)
    after = evals(runs["base"] / "straight")
    assert after["eval_n"] == before["n"] == 48 and after["eval_classes"] == 6
    assert after["eval_top1"] >= 50.0 and after["eval_top1"] >= before["top1"] + 20, (before["top1"], after)
    assert 0 <= after["ema_eval_top1"] <= 100 and "with the EMA weights" in runs["straight_out"]
    # the run's last checkpoint, loaded raw and with its averages (model.ema_weights), scores what the run reported
    last = str(runs["base"] / "straight" / "checkpoints" / "last.ckpt")
    for ema_weights, key in ((False, "eval_top1"), (True, "ema_eval_top1")):
        got = zero_shot_eval(create_model(None, checkpoint=last, ema_weights=ema_weights), held_out, 32, 48)
        assert got["top1"] == pytest.approx(after[key], abs=0.01), (key, got, after)


def test_every_option_resumes_bit_identically(runs):
    assert f"stopped at step {STOP} of 24" in runs["first"] and f"steps {STOP}->24 of 24" in runs["second"]
    straight, split = runs["straight"], runs["split"]
    assert straight.keys() == split.keys() and any(k.startswith("ema.") for k in straight)
    for k in straight:
        assert np.array_equal(straight[k], split[k]), f"{k} differs after resuming"
    assert losses(runs["base"] / "split") == losses(runs["base"] / "straight")
    assert evals(runs["base"] / "split") == evals(runs["base"] / "straight")


def test_two_workers_fine_tune_like_one(runs):
    straight, w2 = runs["straight"], runs["w2"]
    assert straight.keys() == w2.keys()
    compared = [k for k in straight if is_weight(k) or k.startswith("ema.")]
    worst = max((float(np.max(np.abs(function_part(k.removeprefix("ema."), straight[k])
                                     - function_part(k.removeprefix("ema."), w2[k])))), k) for k in compared)
    assert worst[0] <= TOL, f"{worst[1]} differs by {worst[0]:.3g} on 2 workers"
    one, two = losses(runs["base"] / "straight"), losses(runs["base"] / "w2")
    assert sorted(one) == sorted(two) == list(range(4, 25, 4))
    assert max(abs(one[s] - two[s]) for s in one) <= TOL
