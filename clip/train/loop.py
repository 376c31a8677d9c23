"""Data-parallel CLIP training: `python -m clip.train --config FILE [--set key=value ...]`.

Reads top to bottom: set-up, resume, the loop (compiled train step, global loss, periodic zero-shot
evaluation and checkpoints on rank 0), and the end of the run. Rank and world size come from the
environment the launcher sets (see clip.parallel.distributed); with none, this is the single-card path.

The step itself (optimiser, clipping, loss scaling) is clip.train.step; see docs/training.md for what
matches torch.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Optional

import mindspore as ms
import numpy as np

from clip.config import RunConfig, add_config_arguments, load_config, to_dict, write_resolved
from clip.data import build_train_source
from clip.data.pipeline import steps_per_epoch as epoch_steps
from clip.data.pipeline import train_batches
from clip.data.webdataset import write_pending_indexes
from clip.loss import sigmoid
from clip.loss.contrastive import ContrastiveLoss
from clip.model import create_model, model_name
from clip.model import hf_tokenizer, patch_dropout
from clip.parallel import distributed
from clip.train import checkpoint, compile_cache, precision, preflight, runlog
from clip.model.groups import lock_towers
from clip.train.ema import EMA
from clip.train.optim import build_optimizer, lr_schedule, lr_scales
from clip.train.precision import LossScaler
from clip.train.recompute import recompute_blocks
from clip.train.step import build_train_step
from launcher import worker
from launcher.errors import ArgumentParser, UserError, exit_on_user_error

EVAL_WAIT_SECONDS = 7200

# ---------------------------------------------------------------- pure helpers

def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    """max_steps when set, else whole epochs."""
    return cfg.train.max_steps or cfg.train.epochs * steps_per_epoch


def record_line(step: int, loss: float, lr: float, logit_scale: float, grad_norm: float, samples_per_s: float,
                scaler: Optional[dict] = None) -> dict:
    """A metrics.jsonl training line; fp16 runs add the loss scale and the running count of skipped steps."""
    return {"step": step, "loss": loss, "lr": lr, "logit_scale": logit_scale, "grad_norm": grad_norm,
            "samples_per_s": samples_per_s, **(scaler or {})}


def check_skipped(step: int, in_a_row: int, limit: int, loss_scale: float) -> None:
    """fp16: overflowing steps are normal, a long run of them means the model diverged."""
    if in_a_row > limit:
        raise UserError(f"train.max_skipped_steps: {in_a_row} steps in a row up to step {step} had non-finite "
                        f"gradients (loss scale now {loss_scale:g}); lower train.lr or check the data")


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
    dtype = precision.model_dtype(t.precision, cfg.model.dtype)
    per_rank = t.batch_size * t.accum_steps  # samples per rank and step: K micro-batches of B
    global_batch = world * per_rank
    shape = f"{world} x {t.batch_size}" + (f" x {t.accum_steps}" if t.accum_steps > 1 else "")
    source = build_train_source(cfg.data.train)
    per_epoch = epoch_steps(len(source), per_rank, world)
    if per_epoch == 0:
        raise UserError(f"data.train: {len(source)} samples are fewer than one global batch of {global_batch} "
                        f"(train.batch_size {t.batch_size} x {world} ranks"
                        + (f" x train.accum_steps {t.accum_steps})" if t.accum_steps > 1 else ")"))
    steps = total_steps(cfg, per_epoch)
    stop = min(steps, t.stop_after or steps)
    resume_from = checkpoint.resume_path(t.resume, cfg.output_dir)
    stored, start = {}, 0
    if resume_from:  # read before building anything, so a wrong file fails fast
        stored, meta = checkpoint.load(resume_from)
        if meta["global_batch"] != global_batch:
            raise UserError(f"train.resume: {resume_from!r} was trained with a global batch of "
                            f"{meta['global_batch']}; this run has {shape} = {global_batch}; set "
                            f"train.batch_size / train.accum_steps to match or train.resume: none")
        precision.check_resume(meta["precision"], t.precision, t.resume_reset_scaler, resume_from)
        start = meta["step"]

    ms.set_seed(t.seed)
    siglip = cfg.loss.type == "siglip"  # the sigmoid loss brings a learnable bias and open_clip's --siglip start
    model = create_model(cfg.model.name, checkpoint=cfg.model.checkpoint, dtype=dtype, image_size=cfg.model.image_size,
                         ema_weights=cfg.model.ema_weights,
                         **({"init_logit_bias": sigmoid.INIT_LOGIT_BIAS, "init_logit_scale": sigmoid.INIT_LOGIT_SCALE}
                            if siglip else {}))
    if resume_from:
        checkpoint.check_architecture(meta, model.config, resume_from)
    tokenizer = hf_tokenizer.attach(model, cfg.model.tokenizer)  # a checkpoint's SigLIP needs its file too
    recompute_blocks(model, cfg.model.recompute)
    distributed.check_identical_params(model)
    m = cfg.model  # locked parameters stay out of the optimiser, and so out of the gradients and all-reduce
    locked = lock_towers(model, m.lock_image, m.lock_image_unlocked_groups, m.lock_text, m.lock_text_unlocked_layers)
    scales = lr_scales([p.name for p in model.trainable_params()], model.config, t.lr, t.lr_image, t.lr_text,
                       t.layer_decay)
    optimizer = build_optimizer(model, t.optimizer, t.weight_decay, t.beta1, t.beta2, t.eps, scales)
    ema = EMA(optimizer.parameters, t.ema_decay) if t.ema_decay else None
    lrs = lr_schedule(t.lr_schedule, t.lr, t.min_lr, t.warmup_steps, steps).astype(np.float32)
    scaler = LossScaler(t.loss_scale_init) if t.precision == "fp16" else None
    loss_fn = sigmoid.SigmoidLoss(model.logit_bias, cfg.loss.mode) if siglip else ContrastiveLoss(cfg.loss.mode)
    reducer = distributed.grad_reducer(optimizer.parameters, info)
    step_cell = build_train_step(t, model, loss_fn, optimizer, reducer, scaler)
    # The train step's graphs are the first the process compiles and the only ones cached (clip.train.compile_cache);
    # keyed here, after the loss and the reducer set up the step's collectives, whose transport is in the key.
    cache = (compile_cache.enable_for_train_step(to_dict(cfg), model.config.to_dict(), world, rank)
             if t.mode == "graph" else None)
    stored_params = checkpoint.unique_parameters([model, optimizer] + ([scaler] if scaler else [])
                                                 + ([ema] if ema else []))
    if resume_from:
        fresh_scaler = meta["precision"] != t.precision  # allowed by train.resume_reset_scaler
        fresh_ema = ema is not None and not any(name.startswith("ema.") for name in stored)  # EMA turned on now
        checkpoint.restore([p for p in stored_params if not (fresh_scaler and p.name in precision.SCALER_STATE)
                            and not (fresh_ema and p.name.startswith("ema."))], stored, resume_from)
        if fresh_ema:
            ema.restart()
    write_pending_indexes()  # the shard indexes built while checking: every check above has passed
    if main_rank:
        checkpoint.remove_leftovers(cfg.output_dir)  # a killed attempt's half-written files
        write_resolved(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        log = runlog.MetricsLog(cfg.output_dir, start if resume_from else None)
        board = runlog.TensorBoard(cfg.output_dir, start if resume_from else None, runlog.lr_groups(
            dict(zip([p.name for p in model.trainable_params()], scales)))) if t.tensorboard else None
    progress = runlog.Progress(steps, start, enabled=main_rank)
    patches, p_drop = model.config.grid_size ** 2, cfg.model.patch_dropout
    progress.message(f"training {cfg.model.name or model_name(model.config)} on {world} rank(s) x batch {t.batch_size}"
                     + (f" x {t.accum_steps} micro-batches" if t.accum_steps > 1 else "")
                     + f" (global {global_batch}), {per_epoch} steps/epoch, steps {start}->{stop} of {steps}, "
                     f"loss {cfg.loss.type} {cfg.loss.mode}, {t.mode} mode" + (f", resumed from {resume_from}" if resume_from else "")
                     + (f", patch dropout {p_drop:g}: {patch_dropout.keep_count(patches, p_drop)} of {patches} "
                        f"patches per image" if p_drop else "")
                     + (f", {len(locked)} locked parameters" if locked else "") + (", EMA" if ema else ""))

    def save(step: int) -> None:
        if main_rank:
            epoch, in_epoch = divmod(step, per_epoch)
            checkpoint.save(stored_params, cfg.output_dir,
                            {"step": step, "epoch": epoch, "step_in_epoch": in_epoch,
                             "global_batch": global_batch, "seed": t.seed, "precision": t.precision},
                            t.keep_last, model.config)

    def evaluate(step: int) -> dict:
        result = {}
        if main_rank and cfg.data.eval is not None:
            from clip.eval.zeroshot import zero_shot_eval
            result = zero_shot_eval(model, cfg.data.eval, model.config.image_size, t.eval_batch_size)
            record = {"step": step, "eval_top1": result["top1"], "eval_top5": result["top5"],
                      "eval_n": result["n"], "eval_classes": result["classes"]}
            if ema is not None:  # the averaged weights too, swapped in and back
                with ema.swapped():
                    result["ema"] = zero_shot_eval(model, cfg.data.eval, model.config.image_size, t.eval_batch_size)
                record.update({"ema_eval_top1": result["ema"]["top1"], "ema_eval_top5": result["ema"]["top5"]})
            log.write(record)
            if board:
                board.write(record)
            progress.message(runlog.format_line(record, steps))
        # The other ranks wait here while rank 0 evaluates. They keep beating meanwhile so that --hang-timeout
        # does not take them for hung; rank 0 beats every evaluated batch, so a hang there is still caught, on
        # rank 0 (docs/launcher.md).
        waiting = EVAL_WAIT_SECONDS if cfg.data.eval is not None and not main_rank else 0
        with worker.beat_while_waiting(waiting):
            distributed.barrier()
        return result

    # ---- the loop
    step, result = start, {}
    tick, since = time.perf_counter(), 0
    while step < stop:
        epoch, in_epoch = divmod(step, per_epoch)
        batches = train_batches(source, image_size=model.config.image_size,
                                context_length=model.config.context_length, batch_size=per_rank,
                                rank=rank, world_size=world, epoch=epoch, seed=t.seed, start_step=in_epoch,
                                num_workers=t.num_workers, tokenizer=tokenizer, preprocess=model.config.preprocess)
        for images, tokens in batches:
            # patch dropout: this rank's rows of the step's draw, a function of (seed, step, global position)
            keep = () if not p_drop else (ms.Tensor(patch_dropout.keep_indices(
                t.seed, step, patch_dropout.rank_positions(rank, per_rank), patches, p_drop)),)
            loss, grad_norm = step_cell(ms.Tensor(images), ms.Tensor(tokens), ms.Tensor(lrs[step]), *keep)
            if cache:
                compile_cache.stop_caching(cache)
                cache = None
            # one all-reduce carries the loss and the pre-emption vote, so every rank stops at the same step
            summed = distributed.all_reduce_sum(np.array([loss.asnumpy().reshape(1)[0], worker.stop_requested()],
                                                         np.float64))
            global_loss, preempted = float(summed[0]) / world, summed[1] > 0
            step += 1
            since += 1
            worker.heartbeat()
            scaler_state = None
            if scaler is not None:  # fp16: a non-finite gradient skipped the step on every rank
                scaler_state = {"loss_scale": float(scaler.scale.asnumpy()),
                                "skipped_steps": int(scaler.skipped.asnumpy())}
                check_skipped(step, int(scaler.in_a_row.asnumpy()), t.max_skipped_steps, scaler_state["loss_scale"])
            elif not math.isfinite(global_loss):
                raise UserError(f"loss is {global_loss} at step {step} (train.precision {t.precision}); lower "
                                f"train.lr or check the data")
            if ema is not None and not (scaler is not None and int(scaler.in_a_row.asnumpy())):
                ema()  # after each applied optimiser step; a skipped fp16 step changed no weight
            if main_rank and (step % t.log_every == 0 or step == stop):
                now = time.perf_counter()
                record = record_line(step, global_loss, float(lrs[step - 1]), float(model.logit_scale.asnumpy()),
                                     float(grad_norm.asnumpy()), since * global_batch / (now - tick),
                                     scaler_state)
                log.write(record)
                if board:  # the sigmoid loss's bias beside the scale
                    board.write(record, {} if getattr(model, "logit_bias", None) is None else
                                {"logit_bias": float(model.logit_bias.asnumpy())})
                progress.step(record)
                tick, since = now, 0
            if t.save_every and step % t.save_every == 0 and step < stop:
                save(step)
                tick, since = time.perf_counter(), 0
            if t.eval_every and step % t.eval_every == 0 and step < steps:
                result = evaluate(step)
                tick, since = time.perf_counter(), 0
            if preempted:  # SIGTERM on some rank: every rank saves here and leaves, resumable
                save(step)
                progress.message(f"pre-empted at step {step}: checkpoint saved; resume with train.resume: auto")
                raise SystemExit(worker.PREEMPTED_EXIT_CODE)
            if step >= stop:
                break
        unreadable = int(distributed.all_reduce_sum(np.array([batches.unreadable], np.int64))[0])
        if unreadable:
            progress.message(f"epoch {epoch}: {unreadable} unreadable image(s) replaced by other samples"
                             + (f" (rank 0: {', '.join(batches.unreadable_names[:5])})" if batches.unreadable else ""))

    # ---- the end
    # a run resumed at its last step compiled no train step: the cache must not hand its graph to evaluation
    compile_cache.stop_caching(cache)
    distributed.check_identical_params(model)  # every rank took (or skipped) the same steps
    save(step)
    if step == steps:
        result = evaluate(step)
    progress.close()
    if main_rank:
        log.close()
        if board:
            board.close()
        runlog.plot(runlog.read(log.path), os.path.join(cfg.output_dir, runlog.PLOT))
        if result:
            print(f"final zero-shot top-1 {result['top1']:.2f}% top-5 {result['top5']:.2f}% "
                  f"on {result['n']} images, {result['classes']} classes (rank 0, step {step})", flush=True)
            if "ema" in result:
                print(f"final zero-shot top-1 {result['ema']['top1']:.2f}% top-5 {result['ema']['top5']:.2f}% "
                      f"with the EMA weights", flush=True)
        elif step < steps:
            print(f"stopped at step {step} of {steps} (train.stop_after); resume with train.resume: auto",
                  flush=True)
    return result


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m clip.train", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    return parser


@exit_on_user_error
@worker.record
def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    worker.install(stop_on_sigterm=True)
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
