"""CLIP with OpenAI's architecture; parameter names equal OpenAI's state-dict keys so weights map one to one."""
import math
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from clip.checkpoint import read as read_checkpoint, shapes as checkpoint_shapes
from common.errors import UserError
from clip.presets import DTYPES, PRESETS, CLIPConfig, expected_shapes, get_config, infer_config
from clip.transformer import LayerNorm, Transformer, causal_mask, normal

MODEL_DIR_ENV = "CLIP_MODEL_DIR"
OPENAI_FILES = {"clip_vit_b_32": "ViT-B-32.pt", "clip_vit_b_16": "ViT-B-16.pt", "clip_vit_l_14": "ViT-L-14.pt",
                "clip_vit_l_14@336": "ViT-L-14-336px.pt", "clip_tiny": "(no OpenAI release; train it)"}
MS_DTYPES = {name: getattr(ms, name) for name in DTYPES}


class VisionTransformer(nn.Cell):
    def __init__(self, config: CLIPConfig, compute_dtype):
        super().__init__()
        width, scale = config.vision_width, config.vision_width ** -0.5
        self.dtype = compute_dtype
        self.conv1 = PatchConv(width, config.patch_size, compute_dtype)
        self.class_embedding = normal(scale, (width,), "class_embedding")
        self.positional_embedding = normal(scale, (config.grid_size ** 2 + 1, width), "positional_embedding")
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, config.vision_layers, config.vision_heads, compute_dtype)
        self.ln_post = LayerNorm(width)
        self.proj = normal(scale, (width, config.embed_dim), "proj")
        self.no_mask = Tensor(0.0, ms.float32)

    def construct(self, pixels):
        x = self.conv1(pixels)
        n, width = x.shape[0], x.shape[2]
        cls = ops.broadcast_to(self.class_embedding.reshape(1, 1, width), (n, 1, width))
        x = ops.concat((cls, x), axis=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x), self.no_mask)
        x = self.ln_post(x[:, 0, :])
        return ops.matmul(x.astype(self.dtype), self.proj.astype(self.dtype)).astype(ms.float32)


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
        self.transformer = Transformer(config.text_width, config.text_layers, config.text_heads, dtype)
        self.token_embedding = TokenEmbedding(config.vocab_size, config.text_width)
        self.positional_embedding = normal(0.01, (config.context_length, config.text_width), "positional_embedding")
        self.ln_final = LayerNorm(config.text_width)
        self.text_projection = normal(config.text_width ** -0.5, (config.text_width, config.embed_dim),
                                      "text_projection")
        self.logit_scale = Parameter(Tensor(math.log(1 / 0.07), ms.float32), name="logit_scale")
        self.attn_mask = causal_mask(config.context_length)

    @staticmethod
    def show_support_list():
        """Print and return the preset names `create_model` and `from_pretrained` accept."""
        names = list(PRESETS)
        print(names)
        return names

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "float32") -> "CLIPModel":
        """A `.ckpt` path (architecture inferred from its shapes) or a preset name, whose converted weights are
        looked up in the local model directory. Nothing is downloaded."""
        if name_or_path in PRESETS or os.path.isfile(name_or_path):
            return load_model(name_or_path, dtype=dtype)
        raise UserError(f"{name_or_path!r} is neither a checkpoint file nor a preset ({', '.join(PRESETS)})")

    def encode_image(self, pixels):
        return self.visual(pixels)

    def encode_text(self, tokens):
        n, length = tokens.shape
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        x = self.transformer(x, self.attn_mask[:length, :length])
        x = self.ln_final(x)
        # Pool at the end token, which has the largest id in every sequence.
        eot = ops.argmax(tokens.astype(ms.float32), dim=-1).astype(ms.int32)
        pooled = ops.gather(x.reshape(n * length, -1), ops.arange(n, dtype=ms.int32) * length + eot, 0)
        return ops.matmul(pooled.astype(self.dtype), self.text_projection.astype(self.dtype)).astype(ms.float32)

    def image_features(self, pixels):
        return l2_normalize(self.encode_image(pixels))

    def text_features(self, tokens):
        return l2_normalize(self.encode_text(tokens))

    def construct(self, pixels, tokens):
        return self.image_features(pixels), self.text_features(tokens), ops.exp(self.logit_scale)


class TokenEmbedding(nn.Cell):
    """nn.Embedding names its table `embedding_table`; OpenAI's is `token_embedding.weight`."""

    def __init__(self, vocab_size, width):
        super().__init__()
        self.weight = normal(0.02, (vocab_size, width), "weight")

    def construct(self, tokens):
        return ops.gather(self.weight, tokens, 0)


def l2_normalize(x):
    return x / ops.sqrt(ops.sum(x * x, dim=-1, keepdim=True) + 1e-12)


def create_model(name_or_config: Union[str, CLIPConfig], checkpoint: Optional[str] = None,
                 dtype: str = "float32") -> CLIPModel:
    config = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if dtype == "bfloat16" and ms.get_context("device_target") == "CPU":
        # Fail here with one line rather than deep inside the first forward pass.
        raise UserError("dtype bfloat16 needs an Ascend or GPU device: MindSpore's CPU kernels have no bfloat16 "
                        "MatMul; use float32 or float16 on CPU")
    params = read_checkpoint(checkpoint) if checkpoint else None
    if params is not None:  # checked before the model is built: a wrong file costs no memory and no time
        check_parameters(params, config, checkpoint)
    model = CLIPModel(config.with_dtype(dtype))
    if params is not None:
        for p in model.get_parameters():
            p.set_data(Tensor(params[p.name].asnumpy().astype(np.float32)))
    return model


def check_parameters(params: dict, config: CLIPConfig, checkpoint: str) -> None:
    """Every parameter of the model present in the checkpoint with the right shape, or a UserError naming it."""
    for name, shape in expected_shapes(config).items():
        if name not in params:
            raise UserError(f"checkpoint {checkpoint} has no parameter {name}")
        if tuple(params[name].shape) != shape:
            raise UserError(f"checkpoint {checkpoint}: parameter {name} has shape {tuple(params[name].shape)}, "
                            f"model {model_name(config)} expects {shape}")


def model_name(config: CLIPConfig) -> str:
    for name, preset in PRESETS.items():
        if preset.with_dtype(config.dtype) == config:
            return name
    return "custom"


def pretrained_path(name: str) -> Path:
    """Where `from_pretrained(name)` looks: $CLIP_MODEL_DIR/<name>.ckpt, by default under ~/.cache/mindclip."""
    root = os.environ.get(MODEL_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mindclip", "models")
    return Path(root) / f"{name}.ckpt"


def pretrained_checkpoint(name: str) -> str:
    """The converted weights of preset `name` in the model directory, or a UserError naming the expected file
    and the command that makes it."""
    path = pretrained_path(name)
    if not path.is_file():
        raise UserError(
            f"no converted weights for {name}: expected {path}; convert OpenAI's "
            f"{OPENAI_FILES[name]} with: python -m clip.convert {OPENAI_FILES[name]} {path} "
            f"(or set {MODEL_DIR_ENV} to the directory holding {path.name})")
    return str(path)


def load_model(model, checkpoint: Optional[str] = None, dtype: str = "float32"):
    """The one way a model is made from what a user names: a CLIPModel as is, a preset name (with the given
    checkpoint, else its converted weights in the model directory), or a checkpoint path (architecture
    inferred from its parameter shapes)."""
    if isinstance(model, CLIPModel):
        if checkpoint:
            raise UserError("pass either a model object or a checkpoint, not both")
        return model
    if not isinstance(model, (str, os.PathLike)) and model is not None:
        raise UserError(f"model: got {type(model).__name__}, expected a CLIPModel, preset name or checkpoint")
    if model is None and checkpoint is None:
        raise UserError("no model: give a preset name, a checkpoint path or a CLIPModel")
    model = os.fspath(model) if model is not None else None
    if model is not None and model not in PRESETS and checkpoint is None and (
            os.sep in model or model.endswith(".ckpt") or os.path.exists(model)):
        model, checkpoint = None, model  # a path: checkpoint.read names what is wrong with it
    if model in PRESETS:  # a bare preset name means its converted weights, as in MindFormers' pipeline
        return create_model(model, checkpoint=checkpoint or pretrained_checkpoint(model), dtype=dtype)
    if model is not None and (checkpoint is not None or not os.path.isfile(model)):
        raise UserError(f"model {model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint file")
    path = model or checkpoint
    return create_model(infer_config(checkpoint_shapes(path)), checkpoint=path, dtype=dtype)
