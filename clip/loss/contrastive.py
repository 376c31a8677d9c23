"""CLIP's symmetric contrastive loss over the global batch, sharded across data-parallel ranks.

Each rank gathers every rank's embeddings with gradients (``AllGatherWithGrad``), so W cards with batch B
optimise the same objective, with the same gradients, as one card with batch W*B (docs/loss.md).
"""
from __future__ import annotations

import math
from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from clip.loss.modes import LOSS_MODES
from clip.parallel.distributed import AllGatherWithGrad, DistInfo, init_from_env, step_collectives
from launcher.errors import UserError

LOGIT_SCALE_MAX = math.log(100.0)


def _mean_cross_entropy(logits, target_logits, axis: int):
    """Mean over rows (axis=1) or columns (axis=0) of -log softmax at the matching pair."""
    return (ops.logsumexp(logits, axis) - target_logits).mean()


def full_loss(image, text, logit_scale):
    """The CLIP loss of one batch: mean of image->text and text->image cross-entropy over N x N logits.

    Sample i's image matches sample i's text; ``logit_scale`` is the multiplier exp(t), not t.
    """
    logits = logit_scale * ops.matmul(image, text.T)
    target = logit_scale * (image * text).sum(-1)
    return 0.5 * (_mean_cross_entropy(logits, target, 1) + _mean_cross_entropy(logits, target, 0))


def local_loss(image, text, image_all, text_all, logit_scale):
    """This rank's share of the global CLIP loss: its B rows of both B x N logit matrices.

    ``image``/``text`` are this rank's B samples, which sit at rows rank*B.. of ``image_all``/``text_all``
    (so the label of local row i is column rank*B + i and its logit is the local dot product). The mean
    over ranks of this value is ``full_loss(image_all, text_all, logit_scale)``.
    """
    target = logit_scale * (image * text).sum(-1)
    per_image = logit_scale * ops.matmul(image, text_all.T)
    per_text = logit_scale * ops.matmul(text, image_all.T)
    return 0.5 * (_mean_cross_entropy(per_image, target, 1) + _mean_cross_entropy(per_text, target, 1))


class ContrastiveLoss(nn.Cell):
    """Contrastive loss of L2-normalised features, float32 whatever their dtype.

    Modes: ``local`` (default; B x W*B logits per rank), ``full`` (the W*B x W*B matrix on every rank) and
    ``local_only`` (each rank's own B x B batch: MindFormers' behaviour, a different objective, kept only
    as the baseline that shows the multi-card bug). Pair with ``grad_reducer`` (mean over ranks); the
    value returned, averaged over ranks, is the global-batch loss. One worker creates no collective.
    ``logit_scale`` is the multiplier exp(t), as the model returns it, not the Parameter t.
    """

    def __init__(self, mode: str = "local", info: Optional[DistInfo] = None):
        super().__init__()
        if mode not in LOSS_MODES:
            raise UserError(f"loss.mode={mode!r}: expected one of {', '.join(LOSS_MODES)}")
        info = info or init_from_env()
        self.mode = mode
        self.gathers = info.world_size > 1 and mode != "local_only"
        self.full = mode == "full"
        if self.gathers:
            self.gather = AllGatherWithGrad(info, step_collectives(info))

    def construct(self, image_features, text_features, logit_scale):
        image = image_features.astype(ms.float32)
        text = text_features.astype(ms.float32)
        scale = logit_scale.astype(ms.float32)
        if not self.gathers:
            return full_loss(image, text, scale)
        width = image.shape[1]
        # One collective for both towers: gather [image | text] side by side, then split.
        both_all = self.gather(ops.concat((image, text), 1))
        image_all = both_all[:, :width]
        text_all = both_all[:, width:]
        if self.full:
            return full_loss(image_all, text_all, scale)
        return local_loss(image, text, image_all, text_all, scale)


def clamp_logit_scale(logit_scale):
    """Clamp the log-temperature Parameter to [0, ln 100] in place (after every optimiser step, as CLIP).

    Works eagerly and inside a compiled train step; returns the clamped value.
    """
    return ops.assign(logit_scale, ops.clamp(logit_scale, 0.0, LOGIT_SCALE_MAX))
