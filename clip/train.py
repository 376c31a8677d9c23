"""Data-parallel CLIP training: `python -m clip.train --config FILE [--set key=value ...]`.

Reads top to bottom: set-up, resume, the loop (compiled train step, global loss, periodic zero-shot
evaluation and checkpoints on rank 0), and the end of the run. Rank and world size come from the
environment the launcher sets (see clip.distributed); with none, this is the single-card path.

Optimiser: `nn.AdamWeightDecay` (fastest MindSpore AdamW on CPU and in graph mode). Its semantics differ
from torch's AdamW: no bias correction, and the decay is added to the update before scaling by the
learning rate (param -= lr * (m / (sqrt(v) + eps) + wd * param)). See docs/training.md.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from clip import checkpoint, distributed, metrics, preflight
from clip.config import RunConfig, add_config_arguments, load_config, write_resolved
from clip.data import build_train_source
from clip.data.pipeline import steps_per_epoch as epoch_steps, train_batches
from common.errors import ArgumentParser, UserError, exit_on_user_error
from clip.loss import ContrastiveLoss, clamp_logit_scale
from clip.model import create_model

EVAL_WAIT_SECONDS = 7200

# ---------------------------------------------------------------- pure helpers

def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    """max_steps when set, else whole epochs."""
    return cfg.train.max_steps or cfg.train.epochs * steps_per_epoch


def lr_schedule(lr: float, min_lr: float, warmup_steps: int, steps: int) -> list[float]:
    """Per-step learning rates: linear warm-up reaching `lr` at the end of step warmup_steps, then cosine
    decay towards `min_lr`, built from MindSpore's dynamic-LR functions (index = optimiser step)."""
    # warmup_lr starts at 0 for step 0; shifting by one step gives lr * (t + 1) / warmup_steps instead.
    ramp = nn.warmup_lr(lr, warmup_steps + 1, 1, warmup_steps)[1:steps + 1] if warmup_steps else []
    decay = steps - len(ramp)
    cosine = nn.cosine_decay_lr(min_lr, lr, decay, 1, decay) if decay else []
    return [float(v) for v in list(ramp) + list(cosine)]


def decays(name: str, ndim: int) -> bool:
    """Weight decay on matrices only: not on gains, biases, class embedding or logit_scale (as OpenAI)."""
    return ndim >= 2 and "logit_scale" not in name


def record_line(step: int, loss: float, lr: float, logit_scale: float, samples_per_s: float) -> dict:
    return {"step": step, "loss": loss, "lr": lr, "logit_scale": logit_scale, "samples_per_s": samples_per_s}


# ---------------------------------------------------------------- cells (MindSpore)

class NetWithLoss(nn.Cell):
    """Model + contrastive loss: (images, tokens) -> this rank's loss."""

    def __init__(self, model, loss_fn):
        super().__init__(auto_prefix=False)
        self.model = model
        self.loss_fn = loss_fn

    def construct(self, images, tokens):
        image_features, text_features, scale = self.model(images, tokens)
        return self.loss_fn(image_features, text_features, scale)


class TrainStep(nn.Cell):
    """One compiled step: forward + loss, gradients, mean all-reduce, AdamW, clamp of logit_scale."""

    def __init__(self, model, loss_fn, optimizer, reducer):
        super().__init__(auto_prefix=False)
        self.net = NetWithLoss(model, loss_fn)
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True)
        self.reducer = reducer
        self.logit_scale = model.logit_scale

    def construct(self, images, tokens):
        loss = self.net(images, tokens)
        grads = self.reducer(self.grad(self.net, self.weights)(images, tokens))
        loss = ops.depend(loss, self.optimizer(grads))
        return ops.depend(loss, clamp_logit_scale(self.logit_scale))


def build_optimizer(model, cfg: RunConfig, steps: int):
    """AdamWeightDecay with decay on matrices only and the warm-up + cosine schedule."""
    t = cfg.train
    params = model.trainable_params()
    decay = [p for p in params if decays(p.name, len(p.shape))]
    no_decay = [p for p in params if not decays(p.name, len(p.shape))]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"order_params": params}]
    lrs = np.array(lr_schedule(t.lr, t.min_lr, t.warmup_steps, steps), np.float32)
    optimizer = nn.AdamWeightDecay(groups, learning_rate=ms.Tensor(lrs), beta1=t.beta1, beta2=t.beta2, eps=t.eps)
    return optimizer, lrs


# ---------------------------------------------------------------- the job

def train(cfg: RunConfig) -> dict:
    """Run the job described by `cfg`; returns rank 0's final zero-shot result (empty elsewhere)."""
    # ---- set-up
    ms.set_context(mode=ms.GRAPH_MODE if cfg.train.mode == "graph" else ms.PYNATIVE_MODE)
    # The other ranks wait in a barrier while rank 0 evaluates; CPU collectives give up after 30 s by default.
    os.environ.setdefault("MS_CPU_COMM_OP_TIMEOUT", str(EVAL_WAIT_SECONDS))
    preflight.check_train(cfg, checkpoint.resume_path(cfg.train.resume, cfg.output_dir))
    info = distributed.init_from_env()
    rank, world = info.rank, info.world_size
    main_rank = rank == 0
    t = cfg.train
    source = build_train_source(cfg.data.train)
    per_epoch = epoch_steps(len(source), t.batch_size, world)
    if per_epoch == 0:
        raise UserError(f"data.train: {len(source)} samples are fewer than one global batch "
                        f"(train.batch_size {t.batch_size} x {world} ranks)")
    steps = total_steps(cfg, per_epoch)
    stop = min(steps, t.stop_after or steps)
    resume_from = checkpoint.resume_path(t.resume, cfg.output_dir)
    stored, start = {}, 0
    if resume_from:  # read before building anything, so a wrong file fails fast
        stored, meta = checkpoint.load(resume_from)
        if meta["global_batch"] != world * t.batch_size:
            raise UserError(f"train.resume: {resume_from!r} was trained with a global batch of "
                            f"{meta['global_batch']}; this run has {world} x {t.batch_size} = "
                            f"{world * t.batch_size}; set train.batch_size to match or train.resume: none")
        start = meta["step"]

    ms.set_seed(t.seed)
    model = create_model(cfg.model.name, checkpoint=cfg.model.checkpoint, dtype=cfg.model.dtype)
    distributed.check_identical_params(model)
    optimizer, lrs = build_optimizer(model, cfg, steps)
    loss_fn = ContrastiveLoss(cfg.loss.mode)
    step_cell = TrainStep(model, loss_fn, optimizer, distributed.grad_reducer(optimizer.parameters, info))
    stored_params = checkpoint.unique_parameters([model, optimizer])
    if resume_from:
        checkpoint.restore(stored_params, stored, resume_from)
    if main_rank:
        write_resolved(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        log = metrics.MetricsLog(cfg.output_dir, start if resume_from else None)
    progress = metrics.Progress(steps, start, enabled=main_rank)
    progress.message(f"training {cfg.model.name} on {world} rank(s) x batch {t.batch_size} "
                     f"(global {world * t.batch_size}), {per_epoch} steps/epoch, steps {start}->{stop} of {steps}, "
                     f"loss {cfg.loss.mode}, {t.mode} mode" + (f", resumed from {resume_from}" if resume_from else ""))

    def save(step: int) -> None:
        if main_rank:
            epoch, in_epoch = divmod(step, per_epoch)
            checkpoint.save(stored_params, cfg.output_dir,
                            {"step": step, "epoch": epoch, "step_in_epoch": in_epoch,
                             "global_batch": world * t.batch_size, "seed": t.seed}, t.keep_last)

    def evaluate(step: int) -> dict:
        result = {}
        if main_rank and cfg.data.eval is not None:
            from clip.zeroshot import zero_shot_eval
            result = zero_shot_eval(model, cfg.data.eval, model.config.image_size, t.eval_batch_size)
            record = {"step": step, "eval_top1": result["top1"], "eval_top5": result["top5"],
                      "eval_n": result["n"], "eval_classes": result["classes"]}
            log.write(record)
            progress.message(metrics.format_line(record, steps))
        distributed.barrier()
        return result

    # ---- the loop
    step, result = start, {}
    tick, since = time.perf_counter(), 0
    while step < stop:
        epoch, in_epoch = divmod(step, per_epoch)
        batches = train_batches(source, image_size=model.config.image_size,
                                context_length=model.config.context_length, batch_size=t.batch_size,
                                rank=rank, world_size=world, epoch=epoch, seed=t.seed, start_step=in_epoch,
                                num_workers=t.num_workers)
        for images, tokens in batches:
            loss = step_cell(ms.Tensor(images), ms.Tensor(tokens))
            global_loss = float(distributed.all_reduce_sum(loss.asnumpy().reshape(1).astype(np.float64))[0]) / world
            step += 1
            since += 1
            if not math.isfinite(global_loss):
                raise RuntimeError(f"loss is {global_loss} at step {step}; lower train.lr or check the data")
            if main_rank and (step % t.log_every == 0 or step == stop):
                now = time.perf_counter()
                record = record_line(step, global_loss, float(lrs[step - 1]),
                                     float(model.logit_scale.asnumpy()), since * world * t.batch_size / (now - tick))
                log.write(record)
                progress.step(record)
                tick, since = now, 0
            if t.save_every and step % t.save_every == 0 and step < stop:
                save(step)
                tick, since = time.perf_counter(), 0
            if t.eval_every and step % t.eval_every == 0 and step < steps:
                result = evaluate(step)
                tick, since = time.perf_counter(), 0
            if step >= stop:
                break
        unreadable = int(distributed.all_reduce_sum(np.array([batches.unreadable], np.int64))[0])
        if unreadable:
            progress.message(f"epoch {epoch}: {unreadable} unreadable image(s) replaced by other samples"
                             + (f" (rank 0: {', '.join(batches.unreadable_names[:5])})" if batches.unreadable else ""))

    # ---- the end
    save(step)
    if step == steps:
        result = evaluate(step)
    progress.close()
    if main_rank:
        log.close()
        metrics.plot(metrics.read(log.path), os.path.join(cfg.output_dir, metrics.PLOT))
        if result:
            print(f"final zero-shot top-1 {result['top1']:.2f}% top-5 {result['top5']:.2f}% "
                  f"on {result['n']} images, {result['classes']} classes (rank 0, step {step})", flush=True)
        elif step < steps:
            print(f"stopped at step {step} of {steps} (train.stop_after); resume with train.resume: auto",
                  flush=True)
    return result


@exit_on_user_error
def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m clip.train", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
