"""CLIP's two towers and the model that holds them, with OpenAI's parameter names, so weights map one to one."""
import math
import os

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from clip.model.architectures import DTYPES, PRESETS, CLIPConfig, list_models

from clip.model.transformer import MLP, LayerNorm, Linear, Transformer, causal_mask, normal
from launcher.errors import UserError

MS_DTYPES = {name: getattr(ms, name) for name in DTYPES}


class VisionTransformer(nn.Cell):
    """OpenAI's ViT (class token, ln_pre, LayerNorm of the class token, projection) or, with
    `vision_pool: map`, SigLIP's timm trunk (no class token, a biased patch convolution, the final LayerNorm
    over all tokens, then timm's attention pool; no projection), with the knobs of clip.model.architectures."""

    def __init__(self, config: CLIPConfig, compute_dtype):
        super().__init__()
        width, scale = config.vision_width, config.vision_width ** -0.5
        self.dtype = compute_dtype
        self.class_token = config.class_token
        self.conv1 = PatchConv(width, config.patch_size, compute_dtype, config.vision_patch_bias)
        if self.class_token:
            self.class_embedding = normal(scale, (width,), "class_embedding")
        self.positional_embedding = normal(scale, (config.grid_size ** 2 + self.class_token, width),
                                           "positional_embedding")
        self.has_ln_pre = config.vision_ln_pre
        if self.has_ln_pre:
            self.ln_pre = LayerNorm(width, config.norm_eps)
        act = config.tower_activation("vision")
        self.transformer = Transformer(width, config.vision_layers, config.vision_heads, compute_dtype,
                                       config.mlp_width("vision"), act, config.norm_eps)
        self.ln_post = LayerNorm(width, config.norm_eps)
        self.map_pool = config.vision_pool == "map"
        if self.map_pool:
            self.attn_pool = AttentionPool(width, config.vision_heads, config.mlp_width("vision"), act,
                                           config.norm_eps, compute_dtype)
        self.has_proj = config.vision_projection
        if self.has_proj:
            self.proj = normal(scale, (width, config.embed_dim), "proj")
        self.no_mask = Tensor(0.0, ms.float32)

    def construct(self, pixels, keep=None):
        x = self.conv1(pixels)
        n, width = x.shape[0], x.shape[2]
        if self.class_token:
            cls = ops.broadcast_to(self.class_embedding.reshape(1, 1, width), (n, 1, width))
            x = ops.concat((cls, x), axis=1)
        x = x + self.positional_embedding
        if keep is not None:
            x = drop_patches(x, keep, self.class_token)
        if self.has_ln_pre:
            x = self.ln_pre(x)
        x = self.transformer(x, self.no_mask)
        if self.map_pool:
            x = self.attn_pool(self.ln_post(x))
        else:
            x = self.ln_post(x[:, 0, :])
        if not self.has_proj:
            return x
        return ops.matmul(x.astype(self.dtype), self.proj.astype(self.dtype)).astype(ms.float32)


def drop_patches(x, keep, class_token=True):
    """Patch dropout as open_clip and timm place it (after the position embedding, before ln_pre): the class
    token, if any, and per image the patch tokens listed in `keep` ([N, K] int32, clip.model.patch_dropout)."""
    n, tokens, width = x.shape
    kept = keep.shape[1]
    offset = 1 if class_token else 0
    rows = (ops.arange(n, dtype=ms.int32) * tokens).reshape(n, 1) + keep + offset
    patches = ops.gather(x.reshape(n * tokens, width), rows.reshape(-1), 0).reshape(n, kept, width)
    if not class_token:
        return patches
    return ops.concat((x[:, :1, :], patches), axis=1)


class AttentionPool(nn.Cell):
    """timm's AttentionPoolLatent as SigLIP configures it: one learned latent query attends over all tokens
    (q from the latent, k and v from one fused linear), an output projection, then x + mlp(norm(x)); the
    single query's row is the image embedding. Parameter names are timm's, but the MLP's are OpenAI's
    (c_fc / c_proj) like every other MLP here."""

    def __init__(self, width, heads, mlp_width, act, eps, compute_dtype):
        super().__init__()
        std = width ** -0.5
        self.heads = heads
        self.head_dim = width // heads
        self.scale = self.head_dim ** -0.5
        self.dtype = compute_dtype
        self.latent = normal(std, (1, 1, width), "latent")
        self.q = Linear(width, width, std, compute_dtype)
        self.kv = Linear(width, 2 * width, std, compute_dtype)
        self.proj = Linear(width, width, std, compute_dtype)
        self.norm = LayerNorm(width, eps)
        self.mlp = MLP(width, 1, compute_dtype, mlp_width, act)
        self.scores_matmul = ops.BatchMatMul(transpose_b=True)
        self.values_matmul = ops.BatchMatMul()
        self.softmax = ops.Softmax(axis=-1)

    def construct(self, x):
        n, length, width = x.shape
        q = self.q(self.latent.reshape(1, width)).reshape(1, self.heads, 1, self.head_dim)
        q = ops.broadcast_to(q * self.scale, (n, self.heads, 1, self.head_dim)).astype(self.dtype)
        # [k heads..., v heads...] along the fused output, as timm splits it
        kv = self.kv(x).reshape(n, length, 2 * self.heads, self.head_dim).transpose(0, 2, 1, 3)
        k, v = ops.split(kv, self.heads, axis=1)
        attn = self.softmax(self.scores_matmul(q, k).astype(ms.float32)).astype(self.dtype)
        out = self.values_matmul(attn, v).reshape(n, width)  # one query: [n, heads, 1, head_dim] -> [n, width]
        out = self.proj(out).astype(ms.float32)
        return out + self.mlp(self.norm(out)).astype(ms.float32)


class PatchConv(nn.Cell):
    """The patch convolution (`conv1.weight`, [width, 3, p, p]; OpenAI's has no bias, timm's has) computed as
    one matmul over flattened patches: identical result, and it runs in every dtype on CPU, where Conv2D is
    float32-only. Pixels after the last whole patch are dropped, as a strided convolution drops them."""

    def __init__(self, width, patch_size, compute_dtype, bias=False):
        super().__init__()
        self.patch = patch_size
        self.dtype = compute_dtype
        self.weight = normal((3 * patch_size ** 2) ** -0.5, (width, 3, patch_size, patch_size), "weight")
        self.has_bias = bias
        if bias:
            self.bias = Parameter(initializer("zeros", (width,), ms.float32), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, pixels):
        n, c, h, w = pixels.shape
        p = self.patch
        if h % p or w % p:
            pixels = pixels[:, :, :h // p * p, :w // p * p]
        gh, gw = h // p, w // p
        patches = pixels.reshape(n, c, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(-1, c * p * p).astype(self.dtype)
        x = self.matmul(patches, self.weight.reshape(self.weight.shape[0], -1).astype(self.dtype))
        if self.has_bias:
            x = x + self.bias.astype(self.dtype)
        return x.reshape(n, gh * gw, -1).astype(ms.float32)


class CLIPModel(nn.Cell):
    """`encode_image`/`encode_text` give unnormalised float32 embeddings; calling the model gives normalised
    features and exp(logit_scale), the inputs of the contrastive loss."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        dtype = MS_DTYPES[config.dtype]
        self.dtype = dtype
        self.visual = VisionTransformer(config, dtype)
        self.transformer = Transformer(config.text_width, config.text_layers, config.text_heads, dtype,
                                       config.mlp_width("text"), config.tower_activation("text"), config.norm_eps)
        self.token_embedding = TokenEmbedding(config.vocab_size, config.text_width)
        self.positional_embedding = normal(0.01, (config.context_length, config.text_width), "positional_embedding")
        self.ln_final = LayerNorm(config.text_width, config.norm_eps)
        self.has_text_projection = config.text_projection
        if self.has_text_projection:
            self.text_projection = normal(config.text_width ** -0.5, (config.text_width, config.embed_dim),
                                          "text_projection")
        self.has_text_proj_bias = config.text_proj_bias
        if self.has_text_proj_bias:  # open_clip's text projection as an nn.Linear with bias (SigLIP)
            self.text_projection_bias = Parameter(initializer("zeros", (config.embed_dim,), ms.float32),
                                                  name="text_projection_bias")
        self.logit_scale = Parameter(Tensor(math.log(1 / 0.07), ms.float32), name="logit_scale")
        if config.init_logit_bias is not None:  # SigLIP: the sigmoid loss's learnable bias (clip.loss.sigmoid)
            self.logit_bias = Parameter(Tensor(float(config.init_logit_bias), ms.float32), name="logit_bias")
        self.pool_last = config.text_pool == "last"
        # SigLIP's text tower attends both ways: a zero mask
        self.attn_mask = causal_mask(config.context_length) if config.text_causal_mask else Tensor(
            np.zeros((config.context_length, config.context_length), np.float32))

    @staticmethod
    def show_support_list():
        """Print and return the model names `create_model`, `model.name` and `--model` accept."""
        names = list_models()
        print(names)
        return names

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "float32") -> "CLIPModel":
        """A `.ckpt` path (the architecture it carries, or for older files the one its shapes imply) or a model
        name, whose converted weights are looked up in the local model directory. Nothing is downloaded."""
        from clip.model.factory import load_model

        if name_or_path in PRESETS or os.path.isfile(name_or_path):
            return load_model(name_or_path, dtype=dtype)
        from clip.model.architectures import suggest

        raise UserError(f"{name_or_path!r} is neither a checkpoint file nor a preset name; {suggest(name_or_path)}")

    def encode_image(self, pixels, keep=None):
        return self.visual(pixels, keep)

    def encode_text(self, tokens):
        n, length = tokens.shape
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        x = self.transformer(x, self.attn_mask[:length, :length])
        x = self.ln_final(x)
        if self.pool_last:  # SigLIP: the last position, whatever token holds it
            pooled = x[:, length - 1, :]
        else:  # at the end token, which has the largest id in every sequence
            eot = ops.argmax(tokens.astype(ms.float32), dim=-1).astype(ms.int32)
            pooled = ops.gather(x.reshape(n * length, -1), ops.arange(n, dtype=ms.int32) * length + eot, 0)
        if not self.has_text_projection:  # ViT-SO400M-16-SigLIP-i18n-256: the pooled token as it is
            return pooled
        out = ops.matmul(pooled.astype(self.dtype), self.text_projection.astype(self.dtype))
        if self.has_text_proj_bias:
            out = out + self.text_projection_bias.astype(self.dtype)
        return out.astype(ms.float32)

    def image_features(self, pixels, keep=None):
        return l2_normalize(self.encode_image(pixels, keep))

    def text_features(self, tokens):
        return l2_normalize(self.encode_text(tokens))

    def construct(self, pixels, tokens, keep=None):
        """`keep`: the patch tokens each image keeps in training (patch dropout); None keeps all."""
        return self.image_features(pixels, keep), self.text_features(tokens), ops.exp(self.logit_scale)


class TokenEmbedding(nn.Cell):
    """nn.Embedding names its table `embedding_table`; OpenAI's is `token_embedding.weight`."""

    def __init__(self, vocab_size, width):
        super().__init__()
        self.weight = normal(0.02, (vocab_size, width), "weight")

    def construct(self, tokens):
        return ops.gather(self.weight, tokens, 0)


def l2_normalize(x):
    return x / ops.sqrt(ops.sum(x * x, dim=-1, keepdim=True) + 1e-12)
