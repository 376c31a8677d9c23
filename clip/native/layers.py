"""The native profile's model layers: LayerNorm and QuickGELU on the fused kernels of clip.native.kernels, and
a bias add whose bias gradient is a matrix product. Each has the call of its stock counterpart in
clip.profiles, which chooses between them.

Why the bias add: MindSpore's CPU `BiasAddGrad` kernel is slow for the MLP's wide activations, while the
same column sum as a product with a row of ones runs on the BLAS matmul (docs/model.md has the measurements).
"""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops


class LayerNorm(nn.Cell):
    """`(x, gamma, beta) -> y` over the last axis in float32, one fused kernel each way (`kernels.layer_norm()`)."""

    def __init__(self, op, eps: float):
        super().__init__()
        self.op = op
        self.eps = Tensor(np.array([eps], np.float32))

    def construct(self, x, gamma, beta):
        y, _, _ = self.op(x, gamma, beta, self.eps)
        return y


class QuickGELU(nn.Cell):
    """`x * sigmoid(1.702 x)` in float32, one fused kernel each way (`kernels.quick_gelu()`) instead of five."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def construct(self, x):
        return self.op(x)


class BiasAdd(nn.Cell):
    """`ops.bias_add` whose bias gradient is `ones @ dy` (a matmul) instead of MindSpore's BiasAddGrad kernel;
    the sum runs in float32 whatever the compute dtype."""

    def construct(self, x, bias):
        return ops.bias_add(x, bias)

    def bprop(self, x, bias, out, dout):
        ones = ops.ones((1, dout.shape[0]), ms.float32)
        return dout, ops.matmul(ones, dout.astype(ms.float32)).reshape(bias.shape).astype(bias.dtype)
