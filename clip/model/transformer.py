"""The residual attention blocks both CLIP towers share, with OpenAI's parameter names.

Parameters are stored in float32 (the optimiser's master copy); each matmul casts to the compute dtype,
while LayerNorm and softmax always run in float32.
"""
import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from clip import profiles


def normal(std, shape, name):
    return Parameter(initializer(Normal(sigma=std), shape, ms.float32), name=name)


class LayerNorm(nn.Cell):
    """LayerNorm in float32 whatever the compute dtype, with parameters named weight/bias like torch; the
    implementation is the device profile's (clip.profiles)."""

    def __init__(self, width, eps=1e-5):
        super().__init__()
        self.weight = Parameter(initializer("ones", (width,), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (width,), ms.float32), name="bias")
        self.norm = profiles.layer_norm(eps)

    def construct(self, x):
        return self.norm(x.astype(ms.float32), self.weight, self.bias)


class Linear(nn.Cell):
    """y = x W^T + b with W stored [out, in] as in PyTorch, computed in the model's dtype."""

    def __init__(self, in_features, out_features, std, compute_dtype=ms.float32):
        super().__init__()
        self.weight = normal(std, (out_features, in_features), "weight")
        self.bias = Parameter(initializer("zeros", (out_features,), ms.float32), name="bias")
        self.dtype = compute_dtype
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = profiles.bias_add()

    def construct(self, x):
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]).astype(self.dtype), self.weight.astype(self.dtype))
        # a bias add along the last axis, not a broadcast `+`: the profile picks its implementation
        y = self.bias_add(y, self.bias.astype(self.dtype))
        return y.reshape(shape[:-1] + (-1,))


class QuickGELU(nn.Cell):
    """x * sigmoid(1.702 x), OpenAI's GELU approximation, as the device profile implements it (clip.profiles)."""

    def __init__(self, compute_dtype=ms.float32):
        super().__init__()
        self.gelu = profiles.quick_gelu(compute_dtype)

    def construct(self, x):
        return self.gelu(x)


class GELU(nn.Cell):
    """Exact (erf) or tanh-approximate GELU, open_clip's nn.GELU: MindSpore's stock op in every profile."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def construct(self, x):
        return ops.gelu(x, approximate=self.approximate)


def activation(name, compute_dtype):
    """The MLP's activation by the architecture's name (clip.model.architectures.ACTIVATIONS)."""
    if name == "quick_gelu":
        return QuickGELU(compute_dtype)
    return GELU("tanh" if name == "gelu_tanh" else "none")


class MultiheadAttention(nn.Cell):
    """Self-attention with packed QKV weights (`in_proj_weight`) like torch.nn.MultiheadAttention."""

    def __init__(self, width, heads, layers, compute_dtype):
        super().__init__()
        std = width ** -0.5
        self.heads = heads
        self.head_dim = width // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.dtype = compute_dtype
        self.in_proj_weight = normal(std, (3 * width, width), "in_proj_weight")
        self.in_proj_bias = Parameter(initializer("zeros", (3 * width,), ms.float32), name="in_proj_bias")
        self.out_proj = Linear(width, width, std * (2 * layers) ** -0.5, compute_dtype)
        self.qkv_matmul = ops.MatMul(transpose_b=True)
        self.scores_matmul = ops.BatchMatMul(transpose_b=True)
        self.values_matmul = ops.BatchMatMul()
        self.softmax = ops.Softmax(axis=-1)
        self.bias_add = profiles.bias_add()

    def construct(self, x, mask):
        n, length, width = x.shape
        qkv = self.qkv_matmul(x.reshape(-1, width).astype(self.dtype), self.in_proj_weight.astype(self.dtype))
        qkv = self.bias_add(qkv, self.in_proj_bias.astype(self.dtype))
        # One 4-D transpose to [n, 3*heads, length, head_dim] and a split: MindSpore's CPU 5-D transpose is
        # far slower (docs/model.md), and this is as plain on every backend.
        qkv = qkv.reshape(n, length, 3 * self.heads, self.head_dim).transpose(0, 2, 1, 3)
        q, k, v = ops.split(qkv, self.heads, axis=1)
        scores = self.scores_matmul(q * self.scale, k).astype(ms.float32) + mask
        attn = self.softmax(scores).astype(self.dtype)
        out = self.values_matmul(attn, v).transpose(0, 2, 1, 3).reshape(n, length, width)
        return self.out_proj(out)


class MLP(nn.Cell):
    def __init__(self, width, layers, compute_dtype, mlp_width=None, act="quick_gelu"):
        super().__init__()
        mlp_width = mlp_width or 4 * width
        self.c_fc = Linear(width, mlp_width, (2 * width) ** -0.5, compute_dtype)
        self.gelu = activation(act, compute_dtype)
        self.c_proj = Linear(mlp_width, width, width ** -0.5 * (2 * layers) ** -0.5, compute_dtype)

    def construct(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Cell):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); the residual stream stays float32."""

    def __init__(self, width, heads, layers, compute_dtype, mlp_width=None, act="quick_gelu", eps=1e-5):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps)
        self.attn = MultiheadAttention(width, heads, layers, compute_dtype)
        self.ln_2 = LayerNorm(width, eps)
        self.mlp = MLP(width, layers, compute_dtype, mlp_width, act)

    def construct(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask).astype(ms.float32)
        x = x + self.mlp(self.ln_2(x)).astype(ms.float32)
        return x


class Transformer(nn.Cell):
    def __init__(self, width, layers, heads, compute_dtype, mlp_width=None, act="quick_gelu", eps=1e-5):
        super().__init__()
        self.resblocks = nn.CellList([ResidualAttentionBlock(width, heads, layers, compute_dtype, mlp_width, act, eps)
                                      for _ in range(layers)])

    def construct(self, x, mask):
        for block in self.resblocks:
            x = block(x, mask)
        return x


def causal_mask(length) -> Tensor:
    """Additive mask: position i attends to positions <= i (the text tower)."""
    return Tensor(np.triu(np.full((length, length), -1e9, np.float32), k=1))
