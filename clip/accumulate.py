"""Contrastive gradient accumulation (`train.accum_steps: K`): one loss over the whole W x B x K global batch.

Plain accumulation (K losses over K micro-batches, gradients summed) is another objective: each sample sees
only 1/K of the negatives. This step keeps the one global loss, as open_clip's `accum_freq` / GradCache do:

1. encode the K micro-batches of this rank without gradients (only one micro-batch's activations are needed at a
   time; the CPU graph runtime still keeps all of them, PYNATIVE frees them: docs/training.md);
2. compute the global contrastive loss over all K*B local and W*K*B gathered features and its gradient with
   respect to the features and the temperature only (the loss is cheap; AllGatherWithGrad's backward hands
   every rank the gradient of its own rows);
3. micro-batch by micro-batch, re-encode with gradients and back-propagate the cached feature gradients
   through the towers (a vector-Jacobian product with the features as the output), summing into one gradient;
4. one mean all-reduce and one optimiser update (clip.optim.GradientUpdate: clipping, fp16 loss scaling).

Step 3 gives exactly dL/dtheta = sum_k (dL/df_k)(df_k/dtheta), the gradient of the one global loss.
`mode="plain"` is the wrong objective, kept only as the baseline that shows the difference (tests).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from clip.config import ACCUM_MODES
from clip.loss import clamp_logit_scale
from clip.optim import GradientUpdate


class AccumulatingTrainStep(nn.Cell):
    """TrainStep's contract for K micro-batches: inputs hold this rank's K*B samples (micro-batch k is rows
    k*B..(k+1)*B); returns (this rank's share of the global loss, global gradient norm). `net` is the
    train step's model + loss Cell (clip.train.NetWithLoss)."""

    def __init__(self, net, optimizer, reducer, accum_steps: int, grad_clip_norm: float = 0.0, scaler=None,
                 mode: str = "contrastive"):
        super().__init__(auto_prefix=False)
        if mode not in ACCUM_MODES:
            raise ValueError(f"accumulation mode {mode!r} is not one of {', '.join(ACCUM_MODES)}")
        self.net = net
        self.model = net.model
        self.loss_fn = net.loss_fn
        self.weights = optimizer.parameters
        self.reducer = reducer
        self.update = GradientUpdate(optimizer, grad_clip_norm, scaler)
        self.logit_scale = net.model.logit_scale
        self.k = accum_steps
        self.plain = mode == "plain"
        self.scaler = scaler
        self.dynamic = scaler is not None
        self.loss_grad = ops.GradOperation(get_all=True, sens_param=True)
        self.tower_grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.net_grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, images, tokens, lr):
        b = images.shape[0] // self.k
        sens = self.scaler.scale if self.dynamic else ops.ones((), ms.float32)
        grads = None
        if self.plain:
            loss = 0.0
            for i in range(self.k):
                x, t = images[i * b:(i + 1) * b], tokens[i * b:(i + 1) * b]
                loss = loss + self.net(x, t) / self.k
                g = self.net_grad(self.net, self.weights)(x, t, sens / self.k)
                grads = g if grads is None else self.hyper_map(ops.add, grads, g)
        else:
            image_parts, text_parts = [], []
            scale = None
            for i in range(self.k):
                image, text, scale = self.model(images[i * b:(i + 1) * b], tokens[i * b:(i + 1) * b])
                image_parts.append(ops.stop_gradient(image))
                text_parts.append(ops.stop_gradient(text))
            image_all = ops.concat(image_parts, 0)
            text_all = ops.concat(text_parts, 0)
            scale = ops.stop_gradient(scale)
            loss = self.loss_fn(image_all, text_all, scale)
            d_image, d_text, d_scale = self.loss_grad(self.loss_fn)(image_all, text_all, scale, sens)
            for i in range(self.k):
                # the temperature's gradient flows through the model once, with the first micro-batch
                d_scale_i = d_scale if i == 0 else ops.zeros_like(d_scale)
                g = self.tower_grad(self.model, self.weights)(
                    images[i * b:(i + 1) * b], tokens[i * b:(i + 1) * b],
                    (d_image[i * b:(i + 1) * b], d_text[i * b:(i + 1) * b], d_scale_i))
                grads = g if grads is None else self.hyper_map(ops.add, grads, g)
        norm = self.update(self.reducer(grads), lr)
        return ops.depend(loss, clamp_logit_scale(self.logit_scale)), norm
