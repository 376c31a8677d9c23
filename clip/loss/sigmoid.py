"""SigLIP's sigmoid loss over the global batch, sharded so that a rank's loss memory does not grow with the ranks.

Every image of this rank meets every text of the global batch: `-log sigmoid(z * (s <img, txt> + b))`, z = +1 for
the true pair and -1 otherwise, summed and divided by the local batch (open_clip's `SigLipLoss` normalisation;
the mean over ranks is then the one-card loss of the global batch, docs/loss.md). The texts are all-gathered with
gradients, as the CLIP loss gathers them, and the W blocks of b x b logits are then processed one at a time,
forward and backward: the backward recomputes each block's logits from the features instead of keeping all W
blocks alive, so the loss holds O(b x b) logits per rank whatever W is.
"""
from __future__ import annotations

import math
from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from clip.parallel.distributed import AllGatherWithGrad, DistInfo, init_from_env, step_collectives
from launcher.errors import UserError

# open_clip's `--siglip` training starts here (open_clip_train/main.py; SigLIP model configs: init_logit_bias)
INIT_LOGIT_SCALE = math.log(10.0)
INIT_LOGIT_BIAS = -10.0
MODES = ("local", "local_only")


def _softplus(y):
    """log(1 + exp(y)) without overflow: -log sigmoid(-y)."""
    return ops.maximum(y, 0.0) + ops.log1p(ops.exp(-ops.abs(y)))


class SigmoidBlocks(nn.Cell):
    """The loss of this rank's b images against the W blocks of b texts in `text_all` (block `own` holds the
    true pairs on its diagonal), one block at a time in both directions.

    The backward is written out (`bprop`, stock operators only, so graph mode on every device runs it): with
    Y = s I T_q^T + b and P = sigmoid(Y) / b, the block's gradients are s P T_q (images), s P^T I (texts),
    sum(P * I T_q^T) (scale) and sum(P) (bias); the true pairs subtract their diagonal term. Each block's Y is
    recomputed there and dropped before the next block, and every block waits for the previous one
    (`ops.depend`), so no schedule can hold two blocks at once.
    """

    def __init__(self, blocks: int, own: int):
        super().__init__()
        self.blocks = blocks
        self.own = own
        # transposes as matmul flags: `.T` does not compile inside a bprop within a larger graph (MindSpore 2.10)
        self.matmul_nt = ops.MatMul(transpose_b=True)
        self.matmul_tn = ops.MatMul(transpose_a=True)

    def construct(self, image, text_all, scale, bias):
        b = image.shape[0]
        total = ops.zeros((), ms.float32)
        for q in range(self.blocks):
            block = ops.depend(text_all[q * b:(q + 1) * b], total)
            total = total + _softplus(scale * self.matmul_nt(image, block) + bias).sum()
        own = text_all[self.own * b:(self.own + 1) * b]
        positive = scale * (image * own).sum() + b * bias  # sum of the true pairs' logits
        return (total - positive) / b

    def bprop(self, image, text_all, scale, bias, out, dout):
        b = image.shape[0]
        g = dout / b
        d_image = ops.zeros_like(image)
        d_scale = ops.zeros((), ms.float32)
        d_bias = ops.zeros((), ms.float32)
        d_text = ()
        for q in range(self.blocks):
            block = ops.depend(text_all[q * b:(q + 1) * b], d_image)
            sims = self.matmul_nt(image, block)
            p = ops.sigmoid(scale * sims + bias) * g
            d_image = d_image + scale * ops.matmul(p, block)
            d_text = d_text + (scale * self.matmul_tn(p, image),)
            d_scale = d_scale + (p * sims).sum()
            d_bias = d_bias + p.sum()
        own = text_all[self.own * b:(self.own + 1) * b]
        d_image = d_image - (g * scale) * own
        d_own = d_text[self.own] - (g * scale) * image
        d_text = d_text[:self.own] + (d_own,) + d_text[self.own + 1:]
        d_scale = d_scale - g * (image * own).sum()
        d_bias = d_bias - g * b
        return d_image, ops.concat(d_text, 0), d_scale, d_bias


class SigmoidLoss(nn.Cell):
    """SigLIP's loss of L2-normalised features, float32 whatever their dtype; `logit_bias` is the model's bias
    Parameter (read here, so the train step's gradient reaches it as it reaches every weight).

    Modes: `local` (default: this rank's images against every rank's texts; the mean over ranks is the one-card
    loss of the global batch) and `local_only` (each rank's own b x b block: a different objective on more than
    one card, kept as the baseline). `logit_scale` is the multiplier exp(t), as the model returns it. One worker
    creates no collective.
    """

    def __init__(self, logit_bias, mode: str = "local", info: Optional[DistInfo] = None):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"loss.mode={mode!r}: loss.type siglip expects one of {', '.join(MODES)}")
        info = info or init_from_env()
        self.logit_bias = logit_bias
        self.gathers = info.world_size > 1 and mode != "local_only"
        if self.gathers:
            self.gather = AllGatherWithGrad(info, step_collectives(info))
            self.blocks = SigmoidBlocks(info.world_size, info.rank)
        else:
            self.blocks = SigmoidBlocks(1, 0)

    def construct(self, image_features, text_features, logit_scale):
        image = image_features.astype(ms.float32)
        text = text_features.astype(ms.float32)
        scale = logit_scale.astype(ms.float32)
        bias = self.logit_bias.astype(ms.float32)
        if self.gathers:
            text = self.gather(text)
        return self.blocks(image, text, scale, bias)
