"""SigLIP's sigmoid loss over the global batch, sharded so that a rank's loss memory does not grow with the ranks.

Every image of this rank meets every text of the global batch: `-log sigmoid(z * (s <img, txt> + b))`, z = +1 for
the true pair and -1 otherwise, summed and divided by the local batch (open_clip's `SigLipLoss` normalisation;
the mean over ranks is then the one-card loss of the global batch, docs/loss.md). The texts are all-gathered with
gradients, as the CLIP loss gathers them, and the W blocks of b x b logits are then processed one at a time. The
loss's gradient is linear in the incoming scalar, so each block's contribution to it is taken in the forward
while the block's logits are alive, and the backward only scales it: no block is kept for, or recomputed in,
the backward, so the loss holds O(b x b) logits per rank whatever W is.
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


class SigmoidBlocks(nn.Cell):
    """The loss of this rank's b images against the W blocks of b texts in `text_all` (block `own` holds the
    true pairs on its diagonal), one block at a time, and its gradients.

    With Y = s I T_q^T + b and P = sigmoid(Y), block q adds P T_q to the image gradient, P^T (s I) is text block
    q's gradient, and sum(P) goes to the bias; the scale's sum(P * I T_q^T) is sum((P T_q) * I), read off the
    b x E image product instead of another pass over b x b. All of it is the gradient for an incoming 1 and is
    returned beside the loss (the caller takes `[0]`); `bprop` multiplies it by the incoming gradient. So each
    block costs 3 matmuls, as under autodiff, where a backward that recomputed the logits cost 4. The scale is
    folded into the b x E images before the matmul and the element-wise work on a block is one bias add and one
    `Softplus` and one `Sigmoid` kernel (single stock kernels; as accurate on CPU as the maximum/abs/exp/log1p
    chain), each followed by a row sum (a full reduction over b x b is several times slower on CPU). Every
    block waits for the previous one's products (`ops.depend`), so no schedule holds two blocks at once.
    """

    def __init__(self, blocks: int, own: int):
        super().__init__()
        self.blocks = blocks
        self.own = own
        # transposes as matmul flags: `.T` does not compile inside a bprop within a larger graph (MindSpore 2.10)
        self.matmul_nt = ops.MatMul(transpose_b=True)
        self.matmul_tn = ops.MatMul(transpose_a=True)
        self.softplus = ops.Softplus()
        self.sigmoid = ops.Sigmoid()

    def construct(self, image, text_all, scale, bias):
        b = image.shape[0]
        scaled = image * scale
        scaled_b = scaled / b  # the texts' gradients come out divided by b, with no pass over W x b x E
        total = ops.zeros((), ms.float32)
        p_sum = ops.zeros((), ms.float32)
        # not ops.zeros_like: under grad, the tuple this cell returns then fails to compile (MindSpore 2.10)
        p_text = ops.zeros(image.shape, ms.float32)
        d_text = ()
        # split rather than text_all[q * b:(q + 1) * b]: on CPU a slice is slower, and one covering the whole tensor
        # (W = 1) costs about as much as a matmul
        texts = ops.split(text_all, b, 0) if self.blocks > 1 else (text_all,)
        for q in range(self.blocks):
            block = ops.depend(texts[q], (total, p_sum, p_text) + d_text[-1:])
            y = self.matmul_nt(scaled, block) + bias
            total = total + self.softplus(y).sum(1).sum()
            p = self.sigmoid(y)
            p_sum = p_sum + p.sum(1).sum()
            p_text = p_text + ops.matmul(p, block)
            d_text = d_text + (self.matmul_tn(p, scaled_b),)
        own = texts[self.own]
        positive = (scaled * own).sum() + b * bias  # sum of the true pairs' logits
        # the true pairs' term -y_ii takes its share off each gradient; all of it divided by b
        d_image = (p_text - own) * (scale / b)
        d_own = d_text[self.own] - scaled_b
        d_text = ops.concat(d_text[:self.own] + (d_own,) + d_text[self.own + 1:], 0) if self.blocks > 1 else d_own
        d_scale = ((p_text - own) * image).sum() / b
        d_bias = (p_sum - b) / b
        return (total - positive) / b, d_image, d_text, d_scale, d_bias

    def bprop(self, image, text_all, scale, bias, out, dout):
        g = dout[0]
        return out[1] * g, out[2] * g, out[3] * g, out[4] * g


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
        return self.blocks(image, text, scale, bias)[0]
