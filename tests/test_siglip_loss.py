"""clip.loss.sigmoid against open_clip's SigLipLoss (torch autograd, float64): one card, and W simulated ranks whose
shares average to the one-card loss of the global batch; the written-out backward in PyNative and graph mode."""
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Parameter, Tensor, nn, ops

from clip.loss.sigmoid import INIT_LOGIT_BIAS, INIT_LOGIT_SCALE, SigmoidBlocks, SigmoidLoss
from clip.parallel.distributed import DistInfo
from launcher.errors import UserError
from openclip_reference import import_open_clip

SINGLE = DistInfo(rank=0, world_size=1, backend="none", device_target="CPU")
SCALE, BIAS = 10.0, -3.0  # a bias off -10 so that positives and negatives both carry gradient


def features(n, dim=16, seed=0):
    rng = np.random.RandomState(seed)
    image, text = rng.randn(n, dim), rng.randn(n, dim)
    image = image + 0.8 * text
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return image.astype(np.float32), text.astype(np.float32)


def open_clip_shares(image, text, scale, bias, world):
    """Each simulated rank's loss as open_clip's SigLipLoss computes it (its own block with the true pairs, the
    other ranks' text blocks negative only), and the gradients of their mean, in float64."""
    loss_fn = import_open_clip().loss.SigLipLoss()
    b = len(image) // world
    i, t = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (image, text))
    s, c = (torch.tensor(float(x), dtype=torch.float64, requires_grad=True) for x in (scale, bias))
    shares = []
    for r in range(world):
        mine = i[r * b:(r + 1) * b]
        share = loss_fn._loss(mine, t[r * b:(r + 1) * b], s, c)
        for q in range(world):
            if q != r:
                share = share + loss_fn._loss(mine, t[q * b:(q + 1) * b], s, c, negative_only=True)
        shares.append(share)
    mean = sum(shares) / world
    mean.backward()
    return [x.item() for x in shares], mean.item(), [x.grad.numpy() for x in (i, t, s, c)]


def close(got, want, rel=1e-5):
    return np.abs(np.asarray(got) - want).max() <= rel * max(1.0, np.abs(want).max())


class LossOf(nn.Cell):
    """The loss alone of a SigmoidBlocks (which returns its gradients beside it), as SigmoidLoss takes it."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks

    def construct(self, *inputs):
        return self.blocks(*inputs)[0]


@pytest.mark.parametrize("jit", [False, True], ids=["pynative", "graph"])
def test_one_card_equals_open_clip_loss_and_gradients(jit):
    image, text = features(8)
    bias = Parameter(Tensor(BIAS, ms.float32), name="logit_bias")
    loss = SigmoidLoss(bias, "local", SINGLE)
    grad_fn = ms.value_and_grad(loss, grad_position=(0, 1, 2), weights=[bias])
    if jit:
        grad_fn = ms.jit(grad_fn)
    value, (inputs, (d_bias,)) = grad_fn(Tensor(image), Tensor(text), Tensor(SCALE, ms.float32))
    _, want, grads = open_clip_shares(image, text, SCALE, BIAS, 1)
    assert value.dtype == ms.float32 and abs(float(value.asnumpy()) - want) <= 1e-5 * want
    for got, expected in zip([g.asnumpy() for g in inputs] + [d_bias.asnumpy()], grads):
        assert close(got, expected)


@pytest.mark.parametrize("world", [2, 4])
def test_rank_shares_average_to_the_global_batch_loss_and_gradient(world):
    """Rank r's blocks against the gathered texts (own block r) are open_clip's rank-r loss; summing every
    rank's text gradient (the gather's backward) and taking the mean over ranks gives the one-card gradient."""
    b = 3
    image, text = features(world * b, seed=world)
    shares, mean, grads = open_clip_shares(image, text, SCALE, BIAS, world)
    _, one_card, one_card_grads = open_clip_shares(image, text, SCALE, BIAS, 1)
    assert abs(mean - one_card) <= 1e-12 * one_card  # open_clip's own N-cards == 1-card identity
    assert all(close(a, w, 1e-12) for a, w in zip(grads, one_card_grads))
    d_image, d_text, d_scale, d_bias = [], np.zeros_like(text), 0.0, 0.0
    for r in range(world):
        blocks = SigmoidBlocks(world, r)
        args = (Tensor(image[r * b:(r + 1) * b]), Tensor(text), Tensor(SCALE, ms.float32), Tensor(BIAS, ms.float32))
        value, (gi, gt, gs, gb) = ms.value_and_grad(LossOf(blocks), grad_position=(0, 1, 2, 3))(*args)
        assert abs(float(value.asnumpy()) - shares[r]) <= 1e-5 * shares[r]
        d_image.append(gi.asnumpy())
        d_text += gt.asnumpy()
        d_scale += float(gs.asnumpy())
        d_bias += float(gb.asnumpy())
    # rank r owns image rows r*b..; text gradients are summed to their owners, then everything is averaged
    got = [np.concatenate(d_image) / world, d_text / world, d_scale / world, d_bias / world]
    for g, w in zip(got, grads):
        assert close(g, w)


@pytest.mark.parametrize("jit", [False, True], ids=["pynative", "graph"])
@pytest.mark.parametrize("world,own", [(1, 0), (3, 1)], ids=["one-block", "three-blocks"])
def test_gradients_taken_in_the_forward_equal_autodiff_of_the_loss(world, own, jit):
    """The gradients the forward returns beside the loss, scaled by the incoming gradient in bprop, equal MindSpore
    differentiating the block loop's loss itself, for an incoming gradient other than 1 (a loss scale)."""
    image, text = features(4 * world, seed=5)
    blocks = SigmoidBlocks(world, own)
    args = (Tensor(image[4 * own:4 * own + 4]), Tensor(text), Tensor(SCALE, ms.float32), Tensor(BIAS, ms.float32))

    class Plain(nn.Cell):
        def construct(self, *inputs):
            return SigmoidBlocks.construct(blocks, *inputs)[0]

    grad = ops.GradOperation(get_all=True, sens_param=True)
    written, derived = grad(LossOf(blocks)), grad(Plain())
    if jit:
        written, derived = ms.jit(written), ms.jit(derived)
    sens = Tensor(2.5, ms.float32)
    written, derived = written(*args, sens), derived(*args, sens)
    for a, b in zip(written, derived):
        assert np.abs(a.asnumpy()).max() > 1e-3 and close(a.asnumpy(), b.asnumpy())


def test_local_only_is_a_different_objective_and_bad_mode_is_one_line():
    image, text = features(8, seed=7)
    shares, mean, _ = open_clip_shares(image, text, SCALE, BIAS, 2)
    own_only = [open_clip_shares(image[r * 4:(r + 1) * 4], text[r * 4:(r + 1) * 4], SCALE, BIAS, 1)[1]
                for r in range(2)]
    assert mean - np.mean(own_only) > 0.1
    bias = Parameter(Tensor(BIAS, ms.float32), name="logit_bias")
    assert not SigmoidLoss(bias, "local_only", SINGLE).gathers
    with pytest.raises(UserError, match=r"^loss.mode='full': loss.type siglip expects one of local, local_only$"):
        SigmoidLoss(bias, "full", SINGLE)


def test_initial_values_are_open_clips():
    assert INIT_LOGIT_SCALE == pytest.approx(math.log(10)) and INIT_LOGIT_BIAS == -10.0


def test_the_loss_asks_the_model_for_a_bias_and_a_checkpoint_keeps_its_own_values(tmp_path):
    """A model without a bias gets one when SigLIP's loss asks (also from a CLIP checkpoint that has none), while
    what a checkpoint holds wins: its logit_scale, and its bias once it has one."""
    from clip.model import create_model

    plain = create_model("clip_tiny")
    assert not hasattr(plain, "logit_bias")
    ms.save_checkpoint(plain, str(tmp_path / "clip.ckpt"))
    fresh = create_model("clip_tiny", init_logit_bias=INIT_LOGIT_BIAS, init_logit_scale=INIT_LOGIT_SCALE)
    assert float(fresh.logit_bias.asnumpy()) == -10.0
    assert float(fresh.logit_scale.asnumpy()) == pytest.approx(math.log(10))
    assert fresh.config.init_logit_bias == -10.0 and fresh.config.architecture()["init_logit_bias"] == -10.0
    from_clip = create_model("clip_tiny", checkpoint=str(tmp_path / "clip.ckpt"), init_logit_bias=INIT_LOGIT_BIAS,
                             init_logit_scale=INIT_LOGIT_SCALE)
    assert float(from_clip.logit_bias.asnumpy()) == -10.0
    assert float(from_clip.logit_scale.asnumpy()) == pytest.approx(math.log(1 / 0.07))
    from_clip.logit_bias.set_data(Tensor(-7.5, ms.float32))
    ms.save_checkpoint(from_clip, str(tmp_path / "siglip.ckpt"))
    again = create_model("clip_tiny", checkpoint=str(tmp_path / "siglip.ckpt"), init_logit_bias=INIT_LOGIT_BIAS)
    assert float(again.logit_bias.asnumpy()) == -7.5
