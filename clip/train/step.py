"""The one compiled train step: model + loss, gradients, mean all-reduce, clipping, loss scaling, optimiser,
clamp of logit_scale. `build_train_step` is what the loop and the benchmarks use, so both run this very step."""
from __future__ import annotations

from typing import Optional

from mindspore import nn, ops

from clip.loss.contrastive import clamp_logit_scale
from clip.train.accumulate import AccumulatingTrainStep
from clip.train.optim import GradientUpdate
from clip.train.precision import LossScaler


class NetWithLoss(nn.Cell):
    """Model + contrastive loss: (images, tokens) -> this rank's loss."""

    def __init__(self, model, loss_fn):
        super().__init__(auto_prefix=False)
        self.model = model
        self.loss_fn = loss_fn

    def construct(self, images, tokens, *keep):
        image_features, text_features, scale = self.model(images, tokens, *keep)
        return self.loss_fn(image_features, text_features, scale)


class TrainStep(nn.Cell):
    """One compiled step: forward + loss, gradients (of the loss times the fp16 loss scale), mean all-reduce,
    then clip.train.optim.GradientUpdate (unscale, global norm, clipping, optimiser unless skipped), and the clamp
    of logit_scale. Returns (this rank's loss, global gradient norm). `keep`: patch dropout's kept patches, if
    any (clip.model.patch_dropout)."""

    def __init__(self, model, loss_fn, optimizer, reducer, grad_clip_norm: float = 0.0,
                 scaler: Optional[LossScaler] = None):
        super().__init__(auto_prefix=False)
        self.net = NetWithLoss(model, loss_fn)
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.reducer = reducer
        self.update = GradientUpdate(optimizer, grad_clip_norm, scaler)
        self.logit_scale = model.logit_scale
        self.scaler = scaler
        self.dynamic = scaler is not None

    def construct(self, images, tokens, lr, *keep):
        loss = self.net(images, tokens, *keep)
        sens = self.scaler.scale.astype(loss.dtype) if self.dynamic else ops.ones_like(loss)
        grads = self.reducer(self.grad(self.net, self.weights)(images, tokens, *keep, sens), tokens)
        norm = self.update(grads, lr)
        return ops.depend(loss, clamp_logit_scale(self.logit_scale)), norm


def build_train_step(t, model, loss_fn, optimizer, reducer, scaler: Optional[LossScaler] = None) -> nn.Cell:
    """The compiled step for train config `t`: TrainStep, or AccumulatingTrainStep for K > 1 micro-batches
    (also used by bench/bench_memory.py, so the benchmark measures this very step)."""
    if t.accum_steps > 1 or t.accum_mode != "contrastive":
        return AccumulatingTrainStep(NetWithLoss(model, loss_fn), optimizer, reducer, t.accum_steps,
                                     t.grad_clip_norm, scaler, t.accum_mode)
    return TrainStep(model, loss_fn, optimizer, reducer, t.grad_clip_norm, scaler)
