"""clip.loss against a numpy CLIP loss with hand-derived gradients (world size 1 and simulated ranks)."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from clip.loss.contrastive import LOGIT_SCALE_MAX, LOSS_MODES, ContrastiveLoss, clamp_logit_scale, full_loss, local_loss
from clip.parallel.distributed import DistInfo
from launcher.errors import UserError

SINGLE = DistInfo(rank=0, world_size=1, backend="none", device_target="CPU")
SCALE = 1 / 0.07


def numpy_clip(image, text, scale):
    """CLIP loss and its gradients w.r.t. image, text and the (exp'd) scale, in float64."""
    image, text = image.astype(np.float64), text.astype(np.float64)
    logits = scale * image @ text.T
    n = len(logits)

    def softmax(x, axis):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    def cross_entropy(x):
        top = x.max(axis=1)
        return (top + np.log(np.exp(x - top[:, None]).sum(axis=1)) - np.diag(x)).mean()

    loss = 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))
    d_logits = 0.5 / n * ((softmax(logits, 1) - np.eye(n)) + (softmax(logits, 0) - np.eye(n)))
    return loss, scale * d_logits @ text, scale * d_logits.T @ image, (d_logits * (image @ text.T)).sum()


def features(n, dim=16, seed=0):
    rng = np.random.RandomState(seed)
    image, text = rng.randn(n, dim), rng.randn(n, dim)
    image = image + 0.8 * text  # some structure, so the loss is not at its random-pair value
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return image.astype(np.float32), text.astype(np.float32)


def value_and_grads(fn, *args, jit=False):
    grad_fn = ms.value_and_grad(fn, grad_position=tuple(range(len(args))))
    if jit:
        grad_fn = ms.jit(grad_fn)
    value, grads = grad_fn(*args)
    return value, [g.asnumpy() for g in grads]


@pytest.mark.parametrize("jit", [False, True], ids=["pynative", "jit"])
@pytest.mark.parametrize("mode", LOSS_MODES)
def test_single_card_matches_numpy_loss_and_gradients(mode, jit):
    image, text = features(12)
    loss = ContrastiveLoss(mode, SINGLE)
    value, grads = value_and_grads(loss, ms.Tensor(image), ms.Tensor(text), ms.Tensor(SCALE, ms.float32), jit=jit)
    expected = numpy_clip(image, text, SCALE)
    assert value.dtype == ms.float32
    assert abs(float(value.asnumpy()) - expected[0]) <= 1e-5 * expected[0]
    for got, want in zip(grads, expected[1:]):
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("dtype", [ms.float16, ms.bfloat16])
def test_low_precision_features_are_scored_in_float32(dtype):
    image, text = features(8, seed=1)
    low_image, low_text = ms.Tensor(image).astype(dtype), ms.Tensor(text).astype(dtype)
    value = ContrastiveLoss("local", SINGLE)(low_image, low_text, ms.Tensor(SCALE, dtype))
    rounded = [t.astype(ms.float32).asnumpy() for t in (low_image, low_text, ms.Tensor(SCALE, dtype))]
    assert value.dtype == ms.float32
    assert abs(float(value.asnumpy()) - numpy_clip(*rounded[:2], float(rounded[2]))[0]) <= 1e-5


def test_local_shares_average_to_the_global_loss_and_gradient():
    """W simulated ranks: mean of local shares = global loss, and its gradient = the global gradient.

    Gather-with-grad hands rank r the gradient of the *sum* of all ranks' shares w.r.t. its own rows;
    the mean all-reduce then divides by W: exactly the global gradient below.
    """
    world, batch = 4, 3
    image, text = features(world * batch, seed=2)

    def mean_of_shares(image_all, text_all, scale):
        shares = [local_loss(image_all[r * batch:(r + 1) * batch], text_all[r * batch:(r + 1) * batch],
                             image_all, text_all, scale) for r in range(world)]
        return sum(shares) / world

    value, grads = value_and_grads(mean_of_shares, ms.Tensor(image), ms.Tensor(text), ms.Tensor(SCALE, ms.float32))
    expected = numpy_clip(image, text, SCALE)
    assert abs(float(value.asnumpy()) - expected[0]) <= 1e-5 * expected[0]
    for got, want in zip(grads, expected[1:]):
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_local_only_is_a_different_objective():
    world, batch = 4, 3
    image, text = features(world * batch, seed=3)
    shares = [numpy_clip(image[r * batch:(r + 1) * batch], text[r * batch:(r + 1) * batch], SCALE)[0]
              for r in range(world)]
    global_loss = float(full_loss(ms.Tensor(image), ms.Tensor(text), ms.Tensor(SCALE, ms.float32)).asnumpy())
    assert abs(global_loss - numpy_clip(image, text, SCALE)[0]) <= 1e-5
    assert global_loss - np.mean(shares) > 0.1  # fewer negatives per row: an easier, different loss


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_one_worker_creates_no_collective(mode):
    loss = ContrastiveLoss(mode, SINGLE)
    assert not loss.gathers
    assert list(loss.cells()) == []


def test_unknown_mode_is_a_one_line_user_error():
    with pytest.raises(UserError, match=r"^loss.mode='global': expected one of local, full, local_only$"):
        ContrastiveLoss("global", SINGLE)


class StepThenClamp(nn.Cell):
    """An optimiser-like update followed by the clamp, as a compiled train step would do it."""

    def __init__(self, param):
        super().__init__()
        self.param = param

    def construct(self, delta):
        updated = ops.assign(self.param, self.param + delta)
        return clamp_logit_scale(ops.depend(self.param, updated))


@pytest.mark.parametrize("start, delta, expected", [
    (math.log(1 / 0.07), 0.0, math.log(1 / 0.07)),
    (4.5, 0.2, LOGIT_SCALE_MAX),
    (0.1, -0.3, 0.0),
])
def test_clamp_logit_scale_eager_jit_and_graph(start, delta, expected):
    assert LOGIT_SCALE_MAX == pytest.approx(math.log(100.0))
    eager = ms.Parameter(ms.Tensor(start + delta, ms.float32), name="logit_scale")
    clamp_logit_scale(eager)
    assert float(eager.asnumpy()) == pytest.approx(expected, abs=1e-6)

    jitted = ms.Parameter(ms.Tensor(start, ms.float32), name="logit_scale")
    ms.jit(StepThenClamp(jitted))(ms.Tensor(delta, ms.float32))
    assert float(jitted.asnumpy()) == pytest.approx(expected, abs=1e-6)

    graph = ms.Parameter(ms.Tensor(start, ms.float32), name="logit_scale")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        StepThenClamp(graph)(ms.Tensor(delta, ms.float32))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert float(graph.asnumpy()) == pytest.approx(expected, abs=1e-6)
