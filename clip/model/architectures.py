"""Model shapes by the names users know from MindFormers and OpenAI, plus a tiny one for tests and the demo."""
import math
from dataclasses import dataclass, fields, replace
from typing import Dict, Tuple

from launcher.errors import UserError

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class CLIPConfig:
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
    dtype: str = "float32"

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "dtype" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"model {f.name} is {value!r}, expected a positive integer")
        if self.dtype not in DTYPES:
            raise UserError(f"model dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.image_size % self.patch_size:
            raise UserError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, tower in ((self.vision_width, self.vision_heads, "vision"),
                                    (self.text_width, self.text_heads, "text")):
            if width % heads:
                raise UserError(f"{tower}_width {width} is not divisible by {tower}_heads {heads}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_pretrained(cls, name: str) -> "CLIPConfig":
        """The preset's configuration, as MindFormers' `CLIPConfig.from_pretrained` gives it."""
        return get_config(name)

    def with_dtype(self, dtype: str) -> "CLIPConfig":
        return replace(self, dtype=dtype)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _openai(embed_dim, image_size, patch_size, vision_width, vision_layers, text_width, text_layers):
    return CLIPConfig(embed_dim=embed_dim, image_size=image_size, patch_size=patch_size,
                      vision_width=vision_width, vision_layers=vision_layers,
                      vision_heads=vision_width // 64, context_length=77, vocab_size=49408,
                      text_width=text_width, text_layers=text_layers, text_heads=text_width // 64)


PRESETS: Dict[str, CLIPConfig] = {
    "clip_vit_b_32": _openai(512, 224, 32, 768, 12, 512, 12),
    "clip_vit_b_16": _openai(512, 224, 16, 768, 12, 512, 12),
    "clip_vit_l_14": _openai(768, 224, 14, 1024, 24, 768, 12),
    "clip_vit_l_14@336": _openai(768, 336, 14, 1024, 24, 768, 12),
    # Small enough to train on two CPU cores in minutes; same architecture.
    "clip_tiny": CLIPConfig(embed_dim=64, image_size=64, patch_size=16, vision_width=128, vision_layers=2,
                            vision_heads=4, context_length=32, vocab_size=49408, text_width=64,
                            text_layers=2, text_heads=2),
}


def get_config(name: str) -> CLIPConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; expected one of {', '.join(PRESETS)}") from None


def infer_config(shapes: Dict[str, tuple]) -> CLIPConfig:
    """Recover the architecture from parameter shapes (OpenAI names), so any checkpoint loads without --model."""
    def need(key, ndim):
        if key not in shapes:
            raise UserError(f"checkpoint has no parameter {key!r}; is it a CLIP ViT checkpoint?")
        shape = tuple(shapes[key])
        if len(shape) != ndim or any(not isinstance(n, int) or n < 1 for n in shape):
            raise UserError(f"checkpoint parameter {key!r} has shape {shape}, expected {ndim} positive sizes")
        return shape

    vision_width, _, patch_size, _ = need("visual.conv1.weight", 4)
    positions = need("visual.positional_embedding", 2)[0] - 1
    grid = math.isqrt(positions)
    if grid < 1 or grid * grid != positions:
        raise UserError(f"checkpoint parameter 'visual.positional_embedding' has {positions + 1} rows, expected "
                        f"a square number of patches plus one")
    context_length, text_width = need("positional_embedding", 2)
    vocab_size = need("token_embedding.weight", 2)[0]
    embed_dim = need("text_projection", 2)[1]

    def layers(prefix):
        return len({k.split(".")[len(prefix.split("."))] for k in shapes if k.startswith(prefix + ".")})

    found = CLIPConfig(embed_dim=embed_dim, image_size=grid * patch_size, patch_size=patch_size,
                       vision_width=vision_width, vision_layers=layers("visual.transformer.resblocks"),
                       vision_heads=vision_width // 64 or 1, context_length=context_length,
                       vocab_size=vocab_size, text_width=text_width,
                       text_layers=layers("transformer.resblocks"), text_heads=text_width // 64 or 1)
    # Head counts are not visible in shapes: take them from a preset with the same shapes when there is one.
    for preset in PRESETS.values():
        if all(getattr(preset, f.name) == getattr(found, f.name) for f in fields(found)
               if f.name not in ("vision_heads", "text_heads")):
            return preset
    return found


def expected_shapes(config: CLIPConfig) -> Dict[str, Tuple[int, ...]]:
    """OpenAI parameter name -> shape for a configuration (the model's parameters, without building it)."""
    shapes: Dict[str, Tuple[int, ...]] = {}

    def tower(prefix: str, width: int, layers: int):
        for i in range(layers):
            block = f"{prefix}transformer.resblocks.{i}."
            shapes.update({
                block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
                block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
                block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
                block + "mlp.c_fc.weight": (4 * width, width), block + "mlp.c_fc.bias": (4 * width,),
                block + "mlp.c_proj.weight": (width, 4 * width), block + "mlp.c_proj.bias": (width,),
                block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
            })

    vw, tw, p = config.vision_width, config.text_width, config.patch_size
    shapes.update({
        "visual.class_embedding": (vw,),
        "visual.positional_embedding": (config.grid_size ** 2 + 1, vw),
        "visual.conv1.weight": (vw, 3, p, p),
        "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,),
        "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
        "visual.proj": (vw, config.embed_dim),
        "token_embedding.weight": (config.vocab_size, tw),
        "positional_embedding": (config.context_length, tw),
        "ln_final.weight": (tw,), "ln_final.bias": (tw,),
        "text_projection": (tw, config.embed_dim),
        "logit_scale": (),
    })
    tower("visual.", vw, config.vision_layers)
    tower("", tw, config.text_layers)
    return shapes
