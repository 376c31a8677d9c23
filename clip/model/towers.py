"""CLIP's two towers and the model that holds them, with OpenAI's parameter names, so weights map one to one."""
import math
import os

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from clip.model.architectures import DTYPES, PRESETS, CLIPConfig, list_models
from clip.model.transformer import LayerNorm, Transformer, causal_mask, normal
from launcher.errors import UserError

MS_DTYPES = {name: getattr(ms, name) for name in DTYPES}


class VisionTransformer(nn.Cell):
    def __init__(self, config: CLIPConfig, compute_dtype):
        super().__init__()
        width, scale = config.vision_width, config.vision_width ** -0.5
        self.dtype = compute_dtype
        self.conv1 = PatchConv(width, config.patch_size, compute_dtype)
        self.class_embedding = normal(scale, (width,), "class_embedding")
        self.positional_embedding = normal(scale, (config.grid_size ** 2 + 1, width), "positional_embedding")
        self.ln_pre = LayerNorm(width, config.norm_eps)
        self.transformer = Transformer(width, config.vision_layers, config.vision_heads, compute_dtype,
                                       config.mlp_width("vision"), config.activation, config.norm_eps)
        self.ln_post = LayerNorm(width, config.norm_eps)
        self.proj = normal(scale, (width, config.embed_dim), "proj")
        self.no_mask = Tensor(0.0, ms.float32)

    def construct(self, pixels, keep=None):
        x = self.conv1(pixels)
        n, width = x.shape[0], x.shape[2]
        cls = ops.broadcast_to(self.class_embedding.reshape(1, 1, width), (n, 1, width))
        x = ops.concat((cls, x), axis=1) + self.positional_embedding
        if keep is not None:
            x = drop_patches(x, keep)
        x = self.transformer(self.ln_pre(x), self.no_mask)
        x = self.ln_post(x[:, 0, :])
        return ops.matmul(x.astype(self.dtype), self.proj.astype(self.dtype)).astype(ms.float32)


def drop_patches(x, keep):
    """Patch dropout as open_clip places it (after the position embedding, before ln_pre): the class token
    and, per image, the patch tokens listed in `keep` ([N, K] int32, clip.model.patch_dropout)."""
    n, tokens, width = x.shape
    kept = keep.shape[1]
    rows = (ops.arange(n, dtype=ms.int32) * tokens).reshape(n, 1) + keep + 1
    patches = ops.gather(x.reshape(n * tokens, width), rows.reshape(-1), 0).reshape(n, kept, width)
    return ops.concat((x[:, :1, :], patches), axis=1)


class PatchConv(nn.Cell):
    """OpenAI's bias-free patch convolution (`conv1.weight`, [width, 3, p, p]) computed as one matmul over
    flattened patches: identical result, and it runs in every dtype on CPU, where Conv2D is float32-only."""

    def __init__(self, width, patch_size, compute_dtype):
        super().__init__()
        self.patch = patch_size
        self.dtype = compute_dtype
        self.weight = normal((3 * patch_size ** 2) ** -0.5, (width, 3, patch_size, patch_size), "weight")
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, pixels):
        n, c, h, w = pixels.shape
        p = self.patch
        patches = pixels.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(-1, c * p * p).astype(self.dtype)
        x = self.matmul(patches, self.weight.reshape(self.weight.shape[0], -1).astype(self.dtype))
        return x.reshape(n, (h // p) * (w // p), -1).astype(ms.float32)


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
                                       config.mlp_width("text"), config.activation, config.norm_eps)
        self.token_embedding = TokenEmbedding(config.vocab_size, config.text_width)
        self.positional_embedding = normal(0.01, (config.context_length, config.text_width), "positional_embedding")
        self.ln_final = LayerNorm(config.text_width, config.norm_eps)
        self.text_projection = normal(config.text_width ** -0.5, (config.text_width, config.embed_dim),
                                      "text_projection")
        self.logit_scale = Parameter(Tensor(math.log(1 / 0.07), ms.float32), name="logit_scale")
        if config.init_logit_bias is not None:  # SigLIP: the sigmoid loss's learnable bias (clip.loss.sigmoid)
            self.logit_bias = Parameter(Tensor(float(config.init_logit_bias), ms.float32), name="logit_bias")
        self.attn_mask = causal_mask(config.context_length)

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
        # Pool at the end token, which has the largest id in every sequence.
        eot = ops.argmax(tokens.astype(ms.float32), dim=-1).astype(ms.int32)
        pooled = ops.gather(x.reshape(n * length, -1), ops.arange(n, dtype=ms.int32) * length + eot, 0)
        return ops.matmul(pooled.astype(self.dtype), self.text_projection.astype(self.dtype)).astype(ms.float32)

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
