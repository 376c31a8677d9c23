"""Contrastive gradient accumulation (`train.accum_steps: K`): one loss over the whole W x B x K global batch.

Plain accumulation (K losses over K micro-batches, gradients summed) is another objective: each sample sees
only 1/K of the negatives. This step keeps the one global loss, as open_clip's `accum_freq` / GradCache do:

1. encode the K micro-batches of this rank without gradients (only one micro-batch's activations are alive at a
   time: each phase is its own compiled graph, see AccumulatingTrainStep);
2. compute the global contrastive loss over all K*B local and W*K*B gathered features and its gradient with
   respect to the features and the temperature only (the loss is cheap; AllGatherWithGrad's backward hands
   every rank the gradient of its own rows);
3. micro-batch by micro-batch, re-encode with gradients and back-propagate the cached feature gradients
   through the towers (a vector-Jacobian product with the features as the output), summing into one gradient;
   the cached gradients make the towers independent here, so each runs as its own graph and only one tower's
   activations are alive at a time;
4. one mean all-reduce and one optimiser update (clip.optim.GradientUpdate: clipping, fp16 loss scaling).

Step 3 gives exactly dL/dtheta = sum_k (dL/df_k)(df_k/dtheta), the gradient of the one global loss.
`mode="plain"` is the wrong objective, kept only as the baseline that shows the difference (tests).
"""
from __future__ import annotations

import re
from typing import Sequence

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import initializer

from clip.config import ACCUM_MODES
from clip.loss.contrastive import clamp_logit_scale
from clip.train.optim import GradientUpdate

# Where a weight sits in its tower: embeddings first, then residual block N at N + 1, then the heads
# (ln_post / proj, ln_final / text_projection, logit_scale), which a backward pass reaches first.
_BLOCK = re.compile(r"resblocks\.(\d+)\.")
_EMBEDDINGS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "token_embedding")
_HEAD_DEPTH = 10 ** 6


def backward_order(names: Sequence[str]) -> list[int]:
    """Indices of the weights named `names` (the model's parameter order) in the order a backward pass
    produces their gradients: the image tower first, each tower from its head down to its embeddings, and
    within a residual block from its last weight to its first.

    The micro-batch graph adds each gradient to the sum in place, and MindSpore runs those in-place adds in
    the order they are written: in parameter order, the first add (the text positional embedding, whose
    gradient comes last) holds every other gradient alive until the backward ends. In production order each
    gradient is added and freed as soon as it exists, which roughly halves the step's memory pool
    (bench/bench_memory.py). The image tower goes first because that is where MindSpore's CPU schedule starts
    the backward of the whole model; the contrastive step runs the towers as separate graphs and keeps this
    order within each."""
    def key(index: int):
        name = names[index]
        block = _BLOCK.search(name)
        if block:
            depth = int(block.group(1)) + 1
        elif any(part in name for part in _EMBEDDINGS):
            depth = 0
        else:
            depth = _HEAD_DEPTH
        return (not name.startswith("visual."), -depth, -index)
    return sorted(range(len(names)), key=key)


class AccumulatingTrainStep:
    """TrainStep's contract for K micro-batches: inputs hold this rank's K*B samples (micro-batch k is rows
    k*B..(k+1)*B); returns (this rank's share of the global loss, global gradient norm). `net` is the
    train step's model + loss Cell (clip.train.NetWithLoss).

    The step is a short Python loop over compiled graphs, one per phase, each compiled once: a single graph
    for the whole step keeps every micro-batch's activations alive until it returns (measured on CPU:
    K = 4 x 16 peaked like plain batch 64), while a graph call frees its intermediates when it returns, so
    the peak is one tower's activations for one micro-batch plus the gradient sum."""

    def __init__(self, net, optimizer, reducer, accum_steps: int, grad_clip_norm: float = 0.0, scaler=None,
                 mode: str = "contrastive"):
        if mode not in ACCUM_MODES:
            raise ValueError(f"accumulation mode {mode!r} is not one of {', '.join(ACCUM_MODES)}")
        self.k = accum_steps
        self.plain = mode == "plain"
        self.weights = optimizer.parameters
        # The running gradient sum lives in Parameters that each micro-batch's graph adds to in place, so that
        # graph holds its own gradients only, not also the sum it was given and the sum it returns.
        self.sum = ms.ParameterTuple([Parameter(initializer("zeros", w.shape, w.dtype), name=f"grad_sum.{w.name}",
                                                requires_grad=False) for w in self.weights])
        self.zero = _Zero(self.sum)
        self.encode = _Encode(net.model)
        # a loss with a weight of its own (SigLIP's logit bias) gets that weight's gradient with the features'
        own = [i for i, w in enumerate(self.weights) if w is getattr(net.loss_fn, "logit_bias", None)]
        self.loss_grad = (_LossGradWithBias(net.loss_fn, scaler, self.weights[own[0]], _subset(self.sum, own)) if own
                          else _LossGrad(net.loss_fn, scaler))
        # the micro-batch graphs take the weights and their sums in backward order (see backward_order); the
        # update keeps the optimiser's order
        order = backward_order([w.name for w in self.weights])
        weights = ms.ParameterTuple([self.weights[i] for i in order])
        sums = ms.ParameterTuple([self.sum[i] for i in order])
        image = [i for i, w in enumerate(weights) if w.name.startswith("visual.")]
        text = [i for i in range(len(weights)) if i not in set(image)]
        # a locked image tower (model.lock_image) has no trainable weight, so no backward to run
        self.image_grad = _ImageGrad(net.model, _subset(weights, image), _subset(sums, image)) if image else None
        self.text_grad = _TextGrad(net.model, _subset(weights, text), _subset(sums, text))
        self.net_grad = _NetGrad(net, weights, scaler, accum_steps, sums)
        self.update = _Update(optimizer, reducer, grad_clip_norm, scaler, net.model.logit_scale, self.sum)

    def __call__(self, images, tokens, lr, keep=None):
        b = images.shape[0] // self.k
        parts = [(images[i * b:(i + 1) * b], tokens[i * b:(i + 1) * b]) for i in range(self.k)]
        # patch dropout's kept patches travel with their images (clip.model.patch_dropout)
        kept = [() if keep is None else (keep[i * b:(i + 1) * b],) for i in range(self.k)]
        self.zero()
        if self.plain:
            loss = 0.0
            for (x, t), k in zip(parts, kept):
                loss = loss + self.net_grad(x, t, *k)
            return loss / self.k, self.update(lr)
        features = [self.encode(x, t, *k) for (x, t), k in zip(parts, kept)]
        image_all = ops.concat([f[0] for f in features], 0)
        text_all = ops.concat([f[1] for f in features], 0)
        loss, d_image, d_text, d_scale = self.loss_grad(image_all, text_all, features[0][2])
        no_scale = ops.zeros_like(d_scale)
        for i, (x, t) in enumerate(parts):
            # one tower at a time: only that tower's activations are alive (bench/bench_memory.py); the
            # temperature's gradient flows once, with the first micro-batch
            if self.image_grad is not None:
                self.image_grad(x, d_image[i * b:(i + 1) * b], *kept[i])
            self.text_grad(t, d_text[i * b:(i + 1) * b], d_scale if i == 0 else no_scale)
        return loss, self.update(lr)


def _subset(parameters, indices):
    return ms.ParameterTuple([parameters[i] for i in indices])


class _Zero(nn.Cell):
    """Set the gradient sum to zero before a step's first micro-batch."""

    def __init__(self, grad_sum):
        super().__init__(auto_prefix=False)
        self.grad_sum = grad_sum
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return _done(self.hyper_map(_set_zero, self.grad_sum))


def _set_zero(parameter):
    return ops.assign(parameter, ops.zeros_like(parameter))


def _done(updates):
    """One scalar that depends on the in-place updates: the graph returns it, not a copy of every sum."""
    return ops.depend(ops.zeros((), ms.float32), updates)


class _Encode(nn.Cell):
    """Features of one micro-batch, no gradient."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, images, tokens, *keep):
        image, text, scale = self.model(images, tokens, *keep)
        return ops.stop_gradient(image), ops.stop_gradient(text), ops.stop_gradient(scale)


class _LossGrad(nn.Cell):
    """The global loss over all cached features and its gradient with respect to them and the temperature
    (times the fp16 loss scale)."""

    def __init__(self, loss_fn, scaler):
        super().__init__(auto_prefix=False)
        self.loss_fn = loss_fn
        self.scaler = scaler
        self.dynamic = scaler is not None
        self.grad = ops.GradOperation(get_all=True, sens_param=True)

    def construct(self, image_all, text_all, scale):
        sens = self.scaler.scale if self.dynamic else ops.ones((), ms.float32)
        loss = self.loss_fn(image_all, text_all, scale)
        d_image, d_text, d_scale = self.grad(self.loss_fn)(image_all, text_all, scale, sens)
        return loss, d_image, d_text, d_scale


class _LossGradWithBias(_LossGrad):
    """_LossGrad for a loss that holds a weight (SigLIP's logit bias): its gradient, taken once per step over the
    whole global batch, is added to that weight's sum here."""

    def __init__(self, loss_fn, scaler, bias, bias_sum):
        super().__init__(loss_fn, scaler)
        self.bias = ms.ParameterTuple([bias])
        self.bias_sum = bias_sum
        self.grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, image_all, text_all, scale):
        sens = self.scaler.scale if self.dynamic else ops.ones((), ms.float32)
        loss = self.loss_fn(image_all, text_all, scale)
        (d_image, d_text, d_scale), d_bias = self.grad(self.loss_fn, self.bias)(image_all, text_all, scale, sens)
        added = _done(self.hyper_map(ops.assign_add, self.bias_sum, d_bias))
        return ops.depend(loss, added), d_image, d_text, d_scale


class _TowerGrad(nn.Cell):
    """Re-encode one micro-batch through one tower with gradients, back-propagate the cached gradients of that
    tower's outputs and add the result to the sums of its weights in place."""

    def __init__(self, model, weights, grad_sum):
        super().__init__(auto_prefix=False)
        self.model = model
        self.weights = weights
        self.grad_sum = grad_sum
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def add(self, grads):
        return _done(self.hyper_map(ops.assign_add, self.grad_sum, grads))


class _ImageGrad(_TowerGrad):
    def features(self, images, *keep):
        return self.model.image_features(images, *keep)

    def construct(self, images, d_image, *keep):
        return self.add(self.grad(self.features, self.weights)(images, *keep, d_image))


class _TextGrad(_TowerGrad):
    """The text tower also carries the temperature."""

    def features(self, tokens):
        return self.model.text_features(tokens), ops.exp(self.model.logit_scale)

    def construct(self, tokens, d_text, d_scale):
        return self.add(self.grad(self.features, self.weights)(tokens, (d_text, d_scale)))


class _NetGrad(nn.Cell):
    """Plain accumulation (the wrong objective): one micro-batch's own loss, its gradient / K added to the sum."""

    def __init__(self, net, weights, scaler, accum_steps: int, grad_sum):
        super().__init__(auto_prefix=False)
        self.net = net
        self.weights = weights
        self.grad_sum = grad_sum
        self.scaler = scaler
        self.dynamic = scaler is not None
        self.k = accum_steps
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, images, tokens, *keep):
        sens = self.scaler.scale if self.dynamic else ops.ones((), ms.float32)
        loss = self.net(images, tokens, *keep)
        grads = self.grad(self.net, self.weights)(images, tokens, *keep, sens / self.k)
        return ops.depend(loss, self.hyper_map(ops.assign_add, self.grad_sum, grads))


class _Update(nn.Cell):
    """One mean all-reduce of the gradient sum, the optimiser update (clipping, fp16 unscaling) and the clamp
    of logit_scale."""

    def __init__(self, optimizer, reducer, grad_clip_norm, scaler, logit_scale, grad_sum):
        super().__init__(auto_prefix=False)
        self.reducer = reducer
        # on one worker the reducer hands the sum Parameters on as they are
        self.update = GradientUpdate(optimizer, grad_clip_norm, scaler, of_parameters=True)
        self.logit_scale = logit_scale
        self.grad_sum = grad_sum

    def construct(self, lr):
        norm = self.update(self.reducer(self.grad_sum), lr)
        return ops.depend(norm, clamp_logit_scale(self.logit_scale))
