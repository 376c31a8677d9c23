"""The native profile's global gradient norm: each square sum a BLAS dot product of the flattened gradient with
itself, which MindSpore's CPU backend runs much faster than `square(g).sum()` and as exactly (docs/model.md)."""
import mindspore as ms
from mindspore import nn, ops

_square_sum = ops.MultitypeFuncGraph("square_sum")


@_square_sum.register("Tensor")
def _grad_square_sum(gradient):
    flat = gradient.astype(ms.float32).reshape(-1)
    return ops.tensor_dot(flat, flat, 1).reshape((1,))


class GradNorm(nn.Cell):
    """Global L2 norm over all gradients (float32), as torch.nn.utils.clip_grad_norm_ computes it.

    `of_parameters`: the gradients are Parameters (the sums of clip.train.accumulate). Flattening a Parameter
    copies it, and MindSpore's CPU schedule would make every copy before the first product (twice the
    gradients' size in its pool), so the products then run one after the other. Gradients fresh from a
    backward pass are flattened without a copy and keep the parallel form."""

    def __init__(self, of_parameters: bool = False):
        super().__init__()
        self.of_parameters = of_parameters
        self.hyper_map = ops.HyperMap()

    def construct(self, gradients):
        if self.of_parameters:
            total = ops.zeros((), ms.float32)
            for gradient in gradients:
                flat = ops.depend(gradient, total).astype(ms.float32).reshape(-1)
                total = total + ops.tensor_dot(flat, flat, 1)
            return ops.sqrt(total)
        return ops.sqrt(ops.concat(self.hyper_map(_grad_square_sum, gradients)).sum())
