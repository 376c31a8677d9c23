"""OpenAI's CLIP (ViT variant) in plain torch: the independent reference for tests and benchmarks.

Written from the published architecture with torch's own building blocks (nn.MultiheadAttention,
nn.LayerNorm, nn.Conv2d), so it shares no code with the MindSpore model. Its `state_dict()` keys are
OpenAI's. It can be scripted or traced (`to_torchscript`) to produce OpenAI-style `.pt` archives.
Test and benchmark use only: the runtime never imports torch.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

# Keys OpenAI's TorchScript archives carry besides parameters; build_model drops them.
NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class Shapes:
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int

    @classmethod
    def of(cls, config) -> "Shapes":
        """From any object with CLIPConfig's field names (e.g. clip.presets.CLIPConfig)."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input dtype (as OpenAI does for fp16 weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                                        self.bias.float(), self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x is sequence-first [L, N, D], torch MultiheadAttention's default layout (as in OpenAI's code)."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, s: Shapes):
        super().__init__()
        grid = s.image_size // s.patch_size
        self.conv1 = nn.Conv2d(3, s.vision_width, kernel_size=s.patch_size, stride=s.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(s.vision_width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, s.vision_width))
        self.ln_pre = LayerNorm(s.vision_width)
        self.transformer = Transformer(s.vision_width, s.vision_layers, s.vision_heads)
        self.ln_post = LayerNorm(s.vision_width)
        self.proj = nn.Parameter(torch.zeros(s.vision_width, s.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels.to(self.conv1.weight.dtype))          # [N, D, g, g]
        x = x.flatten(2).permute(0, 2, 1)                            # [N, g*g, D]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)                          # [L, N, D]
        x = self.transformer(x, None).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, s: Shapes):
        super().__init__()
        self.shapes = s
        self.visual = VisionTransformer(s)
        self.transformer = Transformer(s.text_width, s.text_layers, s.text_heads)
        self.token_embedding = nn.Embedding(s.vocab_size, s.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(s.context_length, s.text_width))
        self.ln_final = LayerNorm(s.text_width)
        self.text_projection = nn.Parameter(torch.zeros(s.text_width, s.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        mask = torch.full((length, length), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
        x = self.transformer(x.permute(1, 0, 2), mask).permute(1, 0, 2)
        x = self.ln_final(x)
        end = tokens.argmax(dim=-1)  # the end token has the largest id
        return x[torch.arange(x.shape[0]), end] @ self.text_projection

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image, logits_per_text), as OpenAI's model returns."""
        image = self.encode_image(pixels)
        text = self.encode_text(tokens)
        image = image / image.norm(p=2, dim=-1, keepdim=True)
        text = text / text.norm(p=2, dim=-1, keepdim=True)
        logits = self.logit_scale.exp() * image @ text.t()
        return logits, logits.t()


def shapes_from_state_dict(state: Dict[str, torch.Tensor]) -> Shapes:
    """Architecture from OpenAI state-dict shapes (heads = width / 64, OpenAI's convention)."""
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    context_length, text_width = state["positional_embedding"].shape

    def depth(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    return Shapes(embed_dim=state["text_projection"].shape[1], image_size=grid * patch, patch_size=patch,
                  vision_width=vision_width, vision_layers=depth("visual.transformer.resblocks."),
                  vision_heads=vision_width // 64, context_length=context_length,
                  vocab_size=state["token_embedding.weight"].shape[0], text_width=text_width,
                  text_layers=depth("transformer.resblocks."), text_heads=text_width // 64)


def build(state: Dict[str, torch.Tensor], shapes: Optional[Shapes] = None) -> CLIP:
    """A float32 eval-mode reference loaded strictly from an OpenAI-named state dict."""
    state = {k: v for k, v in state.items() if k not in NON_PARAMETER_KEYS}
    with torch.device("meta"):  # no throw-away initialisation of large models
        model = CLIP(shapes or shapes_from_state_dict(state))
    model.load_state_dict({k: torch.as_tensor(v).float() for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def random_state_dict(shapes: Shapes, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights at scales that keep activations O(1) through every layer, with non-trivial
    LayerNorm gains and biases so that every parameter influences the output."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    with torch.device("meta"):
        template = CLIP(shapes).state_dict()
    for name, param in template.items():
        shape = param.shape
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("bias"):
            value = 0.02 * torch.randn(shape, generator=gen)
        elif name == "logit_scale":
            value = torch.tensor(4.6052)
        elif name == "token_embedding.weight":
            value = 0.02 * torch.randn(shape, generator=gen)
        elif name.endswith("positional_embedding") or name.endswith("class_embedding"):
            value = 0.1 * torch.randn(shape, generator=gen)
        elif name in ("visual.proj", "text_projection"):
            value = torch.randn(shape, generator=gen) * shape[0] ** -0.5
        else:  # [out, in, ...] weights
            fan_in = param[0].numel()
            value = torch.randn(shape, generator=gen) * fan_in ** -0.5
        state[name] = value.float()
    return state


def to_torchscript(model: CLIP, mode: str = "script") -> torch.jit.ScriptModule:
    """A TorchScript module like OpenAI's released `.pt` files (use torch.jit.save to write it): its
    state dict also holds the integer entries `input_resolution`, `context_length`, `vocab_size`."""
    s = model.shapes
    model = copy.deepcopy(model)
    for key, value in zip(NON_PARAMETER_KEYS, (s.image_size, s.context_length, s.vocab_size)):
        model.register_buffer(key, torch.tensor(value))
    if mode == "script":
        return torch.jit.script(model)
    pixels = torch.zeros(1, 3, s.image_size, s.image_size)
    tokens = torch.zeros(1, s.context_length, dtype=torch.long)
    return torch.jit.trace(model, (pixels, tokens))
