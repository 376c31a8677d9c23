"""The architecture description, and the names it is known by: MindFormers' presets (OpenAI's QuickGELU models and
a tiny one for tests and the demo) and open_clip's pure-ViT configs, whose data ships in clip/assets (no runtime
dependency on open_clip). A path to an open_clip-format JSON config works wherever a name does."""
import difflib
import json
import math
import os
from dataclasses import MISSING, dataclass, fields, replace
from importlib import resources
from typing import Dict, Optional, Tuple

from launcher.errors import UserError

DTYPES = ("float32", "float16", "bfloat16")
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")  # OpenAI's x*sigmoid(1.702x), exact erf GELU, tanh GELU
VISION_POOLS = ("class", "map")
TEXT_POOLS = ("argmax", "last")
PREPROCESSING = ("openai", "siglip")  # clip.model.transforms.PREPROCESSING spells them out
DEFAULT_MODEL = "clip_tiny"  # what runs when neither a name nor a checkpoint says otherwise
ARCHITECTURE_KEY = "architecture"  # the .ckpt entry holding the description as JSON (clip.model.weights)


@dataclass(frozen=True)
class CLIPConfig:
    """Everything that decides the model's parameters and its numbers; the defaults are OpenAI's (QuickGELU,
    MLP 4x, LayerNorm eps 1e-5), so checkpoints written before the description existed mean what they meant."""
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
    activation: str = "quick_gelu"
    vision_mlp_ratio: float = 4.0
    text_mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    init_logit_bias: Optional[float] = None  # SigLIP's learnable logit bias (its initial value); None = no bias
    # open_clip's text_cfg.hf_tokenizer_name (e.g. "timm/ViT-B-16-SigLIP"); None = OpenAI's BPE
    hf_tokenizer_name: Optional[str] = None
    # open_clip's text_cfg.tokenizer_kwargs.clean (e.g. "canonicalize"); None = the tokenizer's default
    tokenizer_clean: Optional[str] = None
    # SigLIP's towers (open_clip's timm trunk and custom text) differ from OpenAI's in these; the defaults are OpenAI's
    vision_pool: str = "class"  # "class": a class token, pooled; "map": no class token, timm's attention pool (MAP)
    vision_ln_pre: bool = True  # LayerNorm before the blocks
    vision_patch_bias: bool = False  # a bias on the patch convolution
    vision_projection: bool = True  # False: the image embedding is the pooled token (embed_dim = vision_width)
    text_causal_mask: bool = True  # False: every token attends to every token
    text_pool: str = "argmax"  # "argmax": at the end token (the largest id); "last": at the last position
    text_proj_bias: bool = False  # a bias after the text projection
    text_projection: bool = True  # False: the pooled token is the text embedding (embed_dim = text_width)
    text_activation: Optional[str] = None  # the text tower's activation when it differs from `activation`
    # the image preprocessing the weights expect (clip.model.transforms): OpenAI's mean/std, shortest side +
    # centre crop; or SigLIP's mean = std = 0.5, squashed to the square
    preprocess: str = "openai"

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"model {f.name} is {value!r}, expected a positive integer")
            if f.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                    or not math.isfinite(value) or value <= 0):
                raise UserError(f"model {f.name} is {value!r}, expected a positive number")
        if self.init_logit_bias is not None and (isinstance(self.init_logit_bias, bool) or not isinstance(
                self.init_logit_bias, (int, float)) or not math.isfinite(self.init_logit_bias)):
            raise UserError(f"model init_logit_bias is {self.init_logit_bias!r}, expected a number or null")
        for key in ("hf_tokenizer_name", "tokenizer_clean"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise UserError(f"model {key} is {value!r}, expected a non-empty string or null")
        for f in fields(self):
            if f.type is bool and not isinstance(getattr(self, f.name), bool):
                raise UserError(f"model {f.name} is {getattr(self, f.name)!r}, expected true or false")
        for key, allowed in (("vision_pool", VISION_POOLS), ("text_pool", TEXT_POOLS), ("preprocess", PREPROCESSING)):
            if getattr(self, key) not in allowed:
                raise UserError(f"model {key} {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.text_activation is not None and self.text_activation not in ACTIVATIONS:
            raise UserError(f"model text_activation {self.text_activation!r} is not one of {', '.join(ACTIVATIONS)} "
                            f"or null")
        if self.text_activation == self.activation:  # one spelling per architecture, so equal configs compare equal
            object.__setattr__(self, "text_activation", None)
        for tower, projected in (("vision", self.vision_projection), ("text", self.text_projection)):
            width = getattr(self, f"{tower}_width")
            if not projected and self.embed_dim != width:
                raise UserError(f"model embed_dim {self.embed_dim} differs from {tower}_width {width}, which "
                                f"{tower}_projection false requires (the pooled token is the embedding)")
        if self.text_proj_bias and not self.text_projection:
            raise UserError("model text_proj_bias true needs text_projection true (a bias of no projection)")
        if self.dtype not in DTYPES:
            raise UserError(f"model dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"model activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        # timm's patch convolution drops the rows and columns after the last whole patch (SO400M/14 at 384 px);
        # a class-token model keeps OpenAI's rule of whole patches only
        if self.image_size % self.patch_size and self.vision_pool == "class":
            raise UserError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, tower in ((self.vision_width, self.vision_heads, "vision"),
                                    (self.text_width, self.text_heads, "text")):
            if width % heads:
                raise UserError(f"{tower}_width {width} is not divisible by {tower}_heads {heads}")
        for tower in ("vision", "text"):
            if self.mlp_width(tower) < 1:
                raise UserError(f"model {tower}_mlp_ratio {getattr(self, tower + '_mlp_ratio')} gives an empty MLP")

    @property
    def class_token(self) -> bool:
        """MAP pooling attends over the patches only: SigLIP's trunk has no class token."""
        return self.vision_pool == "class"

    @property
    def trims_padding(self) -> bool:
        """Whether dropping pad columns after the longest text leaves every embedding unchanged: only when no
        token sees a later one (causal mask) and the pooled one is the end token, not the last position."""
        return self.text_causal_mask and self.text_pool == "argmax"

    def tower_activation(self, tower: str) -> str:
        return self.text_activation or self.activation if tower == "text" else self.activation

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def mlp_width(self, tower: str) -> int:
        """int(width * ratio), as open_clip rounds it (bigG: 1664 * 4.9231 -> 8192)."""
        return int(getattr(self, f"{tower}_width") * getattr(self, f"{tower}_mlp_ratio"))

    @classmethod
    def from_pretrained(cls, name: str) -> "CLIPConfig":
        """The named configuration, as MindFormers' `CLIPConfig.from_pretrained` gives it."""
        return get_config(name)

    def with_dtype(self, dtype: str) -> "CLIPConfig":
        return replace(self, dtype=dtype)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def architecture(self) -> dict:
        """The description without the compute dtype: what a checkpoint stores."""
        return {k: v for k, v in self.to_dict().items() if k != "dtype"}

    def to_json(self) -> str:
        return json.dumps(self.architecture(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> "CLIPConfig":
        """A description stored by to_json (in a checkpoint); an unknown or missing key is a one-line error."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{source}: damaged architecture entry ({exc})") from None
        names = {f.name for f in fields(cls)} - {"dtype"}
        if not isinstance(data, dict):
            raise UserError(f"{source}: architecture entry is not a JSON object")
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{source}: architecture has unknown key {unknown[0]!r} (written by a newer version?)")
        missing = sorted(n for n in names if n not in data and n in _REQUIRED)
        if missing:
            raise UserError(f"{source}: architecture has no {missing[0]!r}")
        try:
            return cls(**data)
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None

    def describe(self) -> str:
        """One short line: activation and the shapes that tell models apart."""
        act = self.activation + (f" (text {self.text_activation})" if self.text_activation else "")
        pool = ", MAP pool" if self.vision_pool == "map" else ""
        return (f"{act}, {self.image_size}px/{self.patch_size}{pool}, vision {self.vision_width}x"
                f"{self.vision_layers} ({self.vision_heads} heads, MLP {self.mlp_width('vision')}), text "
                f"{self.text_width}x{self.text_layers} ({self.text_heads} heads, MLP {self.mlp_width('text')}), "
                f"embed {self.embed_dim}")


_REQUIRED = tuple(f.name for f in fields(CLIPConfig) if f.default is MISSING)  # no default


def _openai(embed_dim, image_size, patch_size, vision_width, vision_layers, text_width, text_layers):
    return CLIPConfig(embed_dim=embed_dim, image_size=image_size, patch_size=patch_size,
                      vision_width=vision_width, vision_layers=vision_layers,
                      vision_heads=vision_width // 64, context_length=77, vocab_size=49408,
                      text_width=text_width, text_layers=text_layers, text_heads=text_width // 64)


MINDFORMERS: Dict[str, CLIPConfig] = {
    "clip_vit_b_32": _openai(512, 224, 32, 768, 12, 512, 12),
    "clip_vit_b_16": _openai(512, 224, 16, 768, 12, 512, 12),
    "clip_vit_l_14": _openai(768, 224, 14, 1024, 24, 768, 12),
    "clip_vit_l_14@336": _openai(768, 336, 14, 1024, 24, 768, 12),
    # Small enough to train on two CPU cores in minutes; same architecture.
    "clip_tiny": CLIPConfig(embed_dim=64, image_size=64, patch_size=16, vision_width=128, vision_layers=2,
                            vision_heads=4, context_length=32, vocab_size=49408, text_width=64,
                            text_layers=2, text_heads=2),
}


# ------------------------------------------------------------------------- open_clip's JSON model configs

_ANY = object()  # a knob that changes nothing here unless another (checked) knob is on
# open_clip 3.3.0 model.py: key -> the only value this model implements (its open_clip default), or _ANY.
_TOP = {"embed_dim": None, "quick_gelu": None, "vision_cfg": None, "text_cfg": None, "custom_text": (False, True),
        "init_logit_scale": _ANY, "init_logit_bias": _ANY, "nonscalar_logit_scale": False, "cast_dtype": None,
        "output_dict": _ANY}
def mlp_ratio_for(hidden: int, width: int) -> float:
    """The ratio open_clip would write for an MLP `hidden` wide on a `width`-wide tower: the 4-decimal one
    (ViT-bigG-14's 8192 / 1664 -> 4.9231, ViT-g-14's 6144 / 1408 -> 4.3637) when int(width * ratio) gives `hidden` back, so a model converted
    from Hugging Face names the same architecture as open_clip's config; else an exact one."""
    exact = hidden / width
    for rounded in (round(exact, 4), math.ceil(exact * 1e4) / 1e4):
        if int(width * rounded) == hidden:
            return rounded
    return (hidden + 0.5) / width


_COMMON = {"width": None, "layers": None, "mlp_ratio": None, "act_kwargs": None, "norm_kwargs": None,
           "ls_init_value": None, "output_tokens": _ANY, "final_ln_after_pool": False, "block_type": (None, "default"),
           "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
           "scale_attn": False, "scale_fc": False}
_VISION = {**_COMMON, "head_width": None, "patch_size": None, "image_size": None, "patch_dropout": 0,
           "attentional_pool": False, "attn_pooler_queries": _ANY, "attn_pooler_heads": _ANY,
           "no_ln_pre": (False, True), "pos_embed_type": "learnable", "pool_type": "tok", "timm_model_name": None,
           "timm_model_pretrained": _ANY, "timm_pool": _ANY, "timm_proj": _ANY, "timm_proj_bias": _ANY,
           "timm_drop": _ANY, "timm_drop_path": _ANY}
_TEXT = {**_COMMON, "heads": None, "context_length": None, "vocab_size": None, "hf_tokenizer_name": _ANY,
         "tokenizer_mode": None, "tokenizer_kwargs": None, "embed_cls": False, "pad_id": 0, "eos_id": _ANY,
         "no_causal_mask": (False, True), "pool_type": ("argmax", "last"), "proj_bias": (False, True),
         "proj_type": ("linear", "none"),
         "hf_model_name": None, "hf_model_pretrained": _ANY, "hf_proj_type": _ANY, "hf_pooler_type": _ANY}
# open_clip's CLIPVisionCfg / CLIPTextCfg defaults for the keys a JSON may leave out.
_VISION_DEFAULTS = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224}
_TEXT_DEFAULTS = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0}


def _check_keys(section: dict, allowed: dict, where: str, source: str) -> None:
    for key, value in section.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{source}: unknown key {where}{key!r}{hint}")
        accepted = allowed[key]
        if accepted is None or accepted is _ANY or key in ("act_kwargs", "norm_kwargs"):
            continue
        choices = accepted if isinstance(accepted, tuple) else (accepted,)
        # a flag is true or false, not 1 or 0 (which compare equal to them)
        if not any(value == c and type(value) is type(c) for c in choices):
            raise UserError(f"{source}: {where}{key} = {json.dumps(value)} is not supported here "
                            f"(only {' or '.join(json.dumps(c) for c in choices)}: this model implements "
                            f"open_clip's plain ViT, SigLIP's timm ViT and the text transformer)")
    for key in ("ls_init_value", "tokenizer_mode", "hf_model_name"):
        if section.get(key) is not None:
            raise UserError(f"{source}: {where}{key} = {json.dumps(section[key])} is not supported here (only null: "
                            f"this model implements open_clip's plain ViT, SigLIP's timm ViT and the text "
                            f"transformer)")


def _activation(section: dict, quick_gelu: bool, where: str, source: str) -> str:
    kwargs = section.get("act_kwargs")
    if kwargs is None:
        return "quick_gelu" if quick_gelu else "gelu"
    approximate = kwargs.get("approximate", "none") if isinstance(kwargs, dict) else None
    if quick_gelu or set(kwargs) - {"approximate"} or approximate not in ("none", "tanh"):
        raise UserError(f"{source}: {where}act_kwargs = {json.dumps(kwargs)} is not supported here (only "
                        f'{{"approximate": "none" | "tanh"}} with quick_gelu false)')
    return "gelu" if approximate == "none" else "gelu_tanh"


def _eps(section: dict, where: str, source: str) -> float:
    kwargs = section.get("norm_kwargs") or {}
    if not isinstance(kwargs, dict) or set(kwargs) - {"eps"}:
        raise UserError(f"{source}: {where}norm_kwargs = {json.dumps(kwargs)} is not supported here (only {{\"eps\": x}})")
    return kwargs.get("eps", 1e-5)


def _tokenizer_clean(text: dict, source: str) -> Optional[str]:
    kwargs = text.get("tokenizer_kwargs")
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict) or set(kwargs) - {"clean"}:
        raise UserError(f"{source}: text_cfg.tokenizer_kwargs = {json.dumps(kwargs)} is not supported here "
                        f'(only {{"clean": name}})')
    return kwargs.get("clean")


def _int(section: dict, key: str, where: str, source: str) -> int:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{source}: {where}{key} = {json.dumps(value)}, expected a positive integer")
    return value


def from_open_clip(data, source: str) -> CLIPConfig:
    """An open_clip model config (the JSON of `model_configs/`, or `model_cfg` of an `open_clip_config.json`)
    -> CLIPConfig. Every key is checked: an unknown key or a knob value this model does not implement is a
    one-line error naming it, never silently ignored."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object with embed_dim, vision_cfg and text_cfg")
    _check_keys(data, _TOP, "", source)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in data:
            raise UserError(f"{source}: missing key {key!r}")
    vision, text = data["vision_cfg"], data["text_cfg"]
    for key, section in (("vision_cfg", vision), ("text_cfg", text)):
        if not isinstance(section, dict):
            raise UserError(f"{source}: {key} is {json.dumps(section)}, expected a JSON object")
    _check_keys(vision, _VISION, "vision_cfg.", source)
    _check_keys(text, _TEXT, "text_cfg.", source)
    quick_gelu = data.get("quick_gelu", False)
    if not isinstance(quick_gelu, bool):
        raise UserError(f"{source}: quick_gelu = {json.dumps(quick_gelu)}, expected true or false")
    trunk = _timm_trunk(vision, source) if vision.get("timm_model_name") is not None else None
    vision, text = {**_VISION_DEFAULTS, **(trunk or vision)}, {**_TEXT_DEFAULTS, **text}
    if isinstance(vision["layers"], list):
        raise UserError(f"{source}: vision_cfg.layers = {json.dumps(vision['layers'])} is a ResNet tower; "
                        f"only ViT towers are supported")
    size = vision["image_size"]
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    vision["image_size"] = size
    vision_act = trunk["activation"] if trunk else _activation(vision, quick_gelu, "vision_cfg.", source)
    text_act = _activation(text, quick_gelu, "text_cfg.", source)
    epsilons = {_eps(vision, "vision_cfg.", source), _eps(text, "text_cfg.", source)}
    if len(epsilons) > 1:
        raise UserError(f"{source}: the towers' LayerNorm eps differ ({', '.join(map(str, sorted(epsilons)))}); "
                        f"only one for both is supported")
    width = _int(vision, "width", "vision_cfg.", source)
    head_width = _int(vision, "head_width", "vision_cfg.", source)
    if width % head_width:
        raise UserError(f"{source}: vision_cfg.width {width} is not a multiple of head_width {head_width}")
    try:
        return CLIPConfig(
            embed_dim=_int(data, "embed_dim", "", source), image_size=_int(vision, "image_size", "vision_cfg.", source),
            patch_size=_int(vision, "patch_size", "vision_cfg.", source), vision_width=width,
            vision_layers=_int(vision, "layers", "vision_cfg.", source), vision_heads=width // head_width,
            context_length=_int(text, "context_length", "text_cfg.", source),
            vocab_size=_int(text, "vocab_size", "text_cfg.", source), text_width=_int(text, "width", "text_cfg.", source),
            text_layers=_int(text, "layers", "text_cfg.", source), text_heads=_int(text, "heads", "text_cfg.", source),
            activation=vision_act, text_activation=text_act, vision_mlp_ratio=vision["mlp_ratio"],
            text_mlp_ratio=text["mlp_ratio"], norm_eps=epsilons.pop(), init_logit_bias=data.get("init_logit_bias"),
            hf_tokenizer_name=text.get("hf_tokenizer_name"), tokenizer_clean=_tokenizer_clean(text, source),
            vision_pool="map" if trunk else "class", vision_ln_pre=not (trunk or vision.get("no_ln_pre", False)),
            vision_patch_bias=bool(trunk), vision_projection=not trunk,
            text_causal_mask=not text.get("no_causal_mask", False), text_pool=text.get("pool_type", "argmax"),
            text_proj_bias=text.get("proj_bias", False) and text.get("proj_type") != "none",
            text_projection=text.get("proj_type") != "none", preprocess="siglip" if trunk else "openai")
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


# open_clip's PreprocessCfg values of each family (OPENAI_DATASET_* and SigLIP's INCEPTION_*, bicubic both)
_PREPROCESS_CFG = {"openai": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                              "interpolation": "bicubic", "resize_mode": "shortest"},
                   "siglip": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                              "resize_mode": "squash"}}


def preprocess_of(cfg, image_size: int, source: str) -> str:
    """The family an open_clip `preprocess_cfg` (of an open_clip_config.json) describes; keys it leaves out
    take open_clip's defaults (OpenAI's). Any other mean, std, interpolation or resize mode is a one-line
    error naming the key: preprocessing the weights were not trained with would pass silently otherwise."""
    if not isinstance(cfg, dict):
        raise UserError(f"{source}: preprocess_cfg is {json.dumps(cfg)}, expected a JSON object")
    for key in cfg:
        if key not in ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"):
            raise UserError(f"{source}: unknown key preprocess_cfg.{key!r}")
    if cfg.get("size", image_size) not in (image_size, [image_size, image_size]) or cfg.get("mode", "RGB") != "RGB":
        key = "size" if "size" in cfg and cfg["size"] not in (image_size, [image_size, image_size]) else "mode"
        raise UserError(f"{source}: preprocess_cfg.{key} = {json.dumps(cfg[key])} is not supported here (only "
                        f"{json.dumps(image_size if key == 'size' else 'RGB')})")
    given = {**_PREPROCESS_CFG["openai"], **{k: cfg[k] for k in cfg if k in _PREPROCESS_CFG["openai"]}}
    # the resize mode names the family; then every other value must be that family's
    family = {"shortest": "openai", "squash": "siglip"}.get(given["resize_mode"]) if isinstance(
        given["resize_mode"], str) else None
    if family is None:
        raise UserError(f"{source}: preprocess_cfg.resize_mode = {json.dumps(given['resize_mode'])} is not supported "
                        f'here (only "shortest", OpenAI\'s, or "squash", SigLIP\'s)')
    for key, want in _PREPROCESS_CFG[family].items():
        value = given[key]
        same = value == want or (isinstance(want, list) and isinstance(value, list) and len(value) == len(want)
                                 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                         and abs(x - y) < 1e-6 for x, y in zip(value, want)))
        if not same:
            raise UserError(f"{source}: preprocess_cfg.{key} = {json.dumps(value)} is not supported here with "
                            f"resize_mode {json.dumps(given['resize_mode'])} (only {json.dumps(want)}, "
                            f"{'OpenAI' if family == 'openai' else 'SigLIP'}'s preprocessing)")
    return family


# With a timm trunk, open_clip reads only these vision_cfg keys; the tower itself is timm's model definition.
_TIMM_KEYS = ("image_size", "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias",
              "timm_drop", "timm_drop_path", "patch_dropout", "output_tokens")


def _timm_trunk(vision: dict, source: str) -> dict:
    """The vision_cfg keys of the timm ViT a SigLIP config names, from timm's model definitions shipped in
    clip/assets (timm is not needed at run time): SigLIP's class-token-free trunk with MAP pooling, used as is
    (no extra projection), since open_clip passes it no image size, at timm's own."""
    name = vision["timm_model_name"]
    entry = _TIMM_MODELS.get(name)
    if entry is None:
        raise UserError(f"{source}: vision_cfg.timm_model_name = {json.dumps(name)} is not supported here (only "
                        f"SigLIP's ViTs with attention pooling: {', '.join(_TIMM_MODELS)})")
    for key in vision:
        if key not in _TIMM_KEYS:
            raise UserError(f"{source}: vision_cfg.{key} is not used with a timm trunk (timm_model_name says the "
                            f"tower); remove it")
    for key, want in (("timm_pool", "map"), ("timm_proj", "none")):
        if vision.get(key) != want:
            raise UserError(f"{source}: vision_cfg.{key} = {json.dumps(vision.get(key))} is not supported here "
                            f"with a timm trunk (only {json.dumps(want)})")
    args, size = entry["model_args"], entry["img_size"]
    if vision.get("image_size", 224) not in (size, [size, size]):
        raise UserError(f"{source}: vision_cfg.image_size = {json.dumps(vision.get('image_size', 224))}, but timm "
                        f"builds {name} at {size} (open_clip passes timm no image size)")
    return {"image_size": size, "patch_size": args["patch_size"], "width": args["embed_dim"],
            "layers": args["depth"], "head_width": args["embed_dim"] // args["num_heads"],
            "mlp_ratio": args.get("mlp_ratio", 4.0), "norm_kwargs": {"eps": 1e-6},
            "activation": {"gelu": "gelu", "gelu_tanh": "gelu_tanh"}[args.get("act_layer", "gelu")]}


def from_hugging_face(data, source: str) -> CLIPConfig:
    """A Hugging Face `CLIPModel` config.json -> CLIPConfig (hidden_act says the activation)."""
    acts = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
    kind = data.get("model_type") if isinstance(data, dict) else None
    if kind not in (None, "clip"):  # SiglipModel & co. share CLIPModel's keys but not its tensors
        raise UserError(f"{source}: model_type {kind!r} is not supported here (only Hugging Face's CLIPModel, "
                        f"\"clip\"); for SigLIP convert open_clip's files from the timm/ repositories (docs/models.md)")
    try:
        v, t = data["vision_config"], data["text_config"]
        if {v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")} - set(acts):
            raise UserError(f"{source}: hidden_act {v.get('hidden_act')!r} / {t.get('hidden_act')!r} is not one of "
                            f"{', '.join(acts)}")
        activations = {acts[v.get("hidden_act", "quick_gelu")], acts[t.get("hidden_act", "quick_gelu")]}
        epsilons = {v.get("layer_norm_eps", 1e-5), t.get("layer_norm_eps", 1e-5)}
        if len(activations) > 1 or len(epsilons) > 1:
            raise UserError(f"{source}: the towers' hidden_act or layer_norm_eps differ; only one for both is supported")

        def ratio(tower):
            return mlp_ratio_for(tower["intermediate_size"], tower["hidden_size"])

        return CLIPConfig(
            embed_dim=data["projection_dim"], image_size=v["image_size"], patch_size=v["patch_size"],
            vision_width=v["hidden_size"], vision_layers=v["num_hidden_layers"], vision_heads=v["num_attention_heads"],
            context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"], text_width=t["hidden_size"],
            text_layers=t["num_hidden_layers"], text_heads=t["num_attention_heads"], activation=activations.pop(),
            vision_mlp_ratio=ratio(v), text_mlp_ratio=ratio(t), norm_eps=epsilons.pop())
    except (KeyError, TypeError) as exc:
        raise UserError(f"{source}: not a Hugging Face CLIP config (no {exc})") from None
    except UserError as exc:
        raise UserError(exc.args[0] if str(exc).startswith(source) else f"{source}: {exc}") from None


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise UserError(f"cannot read model config {path}: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise UserError(f"model config {path} is not valid JSON ({str(exc).splitlines()[0]})") from None


_ASSET = json.loads(resources.files("clip").joinpath("assets/open_clip_models.json").read_text())
# timm ViT name -> {"model_args": its timm entry point's arguments, verbatim; "img_size": its default input size}
_TIMM_MODELS: Dict[str, dict] = _ASSET["timm_models"]


def _open_clip_registry() -> Dict[str, CLIPConfig]:
    return {name: from_open_clip(cfg, f"open_clip config {name}") for name, cfg in _ASSET["models"].items()}


# Every name: MindFormers' first (so an OpenAI-shaped QuickGELU model is called by its MindFormers name).
PRESETS: Dict[str, CLIPConfig] = {**MINDFORMERS, **_open_clip_registry()}


def list_models() -> list:
    """Every model name create_model, model.name and --model accept (a JSON config path works too)."""
    return list(PRESETS)


def is_config_path(name: str) -> bool:
    return name.endswith(".json") or (os.sep in name and os.path.isfile(name))


def get_config(name: str) -> CLIPConfig:
    """A name from list_models() or the path of an open_clip-format JSON config."""
    if not isinstance(name, str):
        raise UserError(f"model name {name!r}: expected a string")
    if name in PRESETS:
        return PRESETS[name]
    if is_config_path(name):
        if not os.path.isfile(name):
            raise UserError(f"model config {name} does not exist")
        return from_open_clip(read_json(name), f"model config {name}")
    raise UserError(f"unknown model {name!r}; {suggest(name)}")


def suggest(name: str) -> str:
    """What to say after an unknown name: the MindFormers names, the closest of all names (difflib)."""
    lowered = {n.lower(): n for n in PRESETS}
    close = difflib.get_close_matches(str(name).lower(), lowered, n=3, cutoff=0.5)
    shown = f" (closest: {', '.join(lowered[c] for c in close)})" if close else ""
    return (f"expected one of {', '.join(MINDFORMERS)}, an open_clip name{shown} or an open_clip JSON config path; "
            f"clip.list_models() lists all {len(PRESETS)} names")


def matching_names(config: CLIPConfig) -> list:
    """Names whose architecture equals `config` (dtype aside)."""
    return [n for n, c in PRESETS.items() if c.architecture() == config.architecture()]


def name_of(config: CLIPConfig) -> str:
    names = matching_names(config)
    return names[0] if names else "custom"


def candidates_for(shapes: Dict[str, tuple]) -> list:
    """Names whose parameter shapes are exactly these (the activation and head count are not in shapes)."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    return [n for n, c in PRESETS.items() if all(shapes.get(k) == v for k, v in expected_shapes(c).items())]


def infer_config(shapes: Dict[str, tuple]) -> CLIPConfig:
    """The architecture of a checkpoint written before checkpoints carried one: those were all OpenAI-style
    (QuickGELU, MLP 4x); head counts, not visible in shapes, come from a QuickGELU preset with the same shapes,
    else width / 64 as they were built."""
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
    for preset in PRESETS.values():
        if preset.activation == "quick_gelu" and all(
                getattr(preset, f.name) == getattr(found, f.name) for f in fields(found)
                if f.name not in ("vision_heads", "text_heads")):
            return preset
    return found


def expected_shapes(config: CLIPConfig) -> Dict[str, Tuple[int, ...]]:
    """OpenAI parameter name -> shape for a configuration (the model's parameters, without building it)."""
    shapes: Dict[str, Tuple[int, ...]] = {}

    def tower(prefix: str, width: int, layers: int, mlp: int):
        for i in range(layers):
            block = f"{prefix}transformer.resblocks.{i}."
            shapes.update({
                block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
                block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
                block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
                block + "mlp.c_fc.weight": (mlp, width), block + "mlp.c_fc.bias": (mlp,),
                block + "mlp.c_proj.weight": (width, mlp), block + "mlp.c_proj.bias": (width,),
                block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
            })

    vw, tw, p = config.vision_width, config.text_width, config.patch_size
    if config.class_token:
        shapes["visual.class_embedding"] = (vw,)
    shapes["visual.positional_embedding"] = (config.grid_size ** 2 + config.class_token, vw)
    shapes["visual.conv1.weight"] = (vw, 3, p, p)
    if config.vision_patch_bias:
        shapes["visual.conv1.bias"] = (vw,)
    if config.vision_ln_pre:
        shapes.update({"visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,)})
    shapes.update({"visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,)})
    if config.vision_pool == "map":  # timm's AttentionPoolLatent: one latent query, q and fused kv, out proj, MLP
        mlp = config.mlp_width("vision")
        shapes.update({
            "visual.attn_pool.latent": (1, 1, vw),
            "visual.attn_pool.q.weight": (vw, vw), "visual.attn_pool.q.bias": (vw,),
            "visual.attn_pool.kv.weight": (2 * vw, vw), "visual.attn_pool.kv.bias": (2 * vw,),
            "visual.attn_pool.proj.weight": (vw, vw), "visual.attn_pool.proj.bias": (vw,),
            "visual.attn_pool.norm.weight": (vw,), "visual.attn_pool.norm.bias": (vw,),
            "visual.attn_pool.mlp.c_fc.weight": (mlp, vw), "visual.attn_pool.mlp.c_fc.bias": (mlp,),
            "visual.attn_pool.mlp.c_proj.weight": (vw, mlp), "visual.attn_pool.mlp.c_proj.bias": (vw,),
        })
    if config.vision_projection:
        shapes["visual.proj"] = (vw, config.embed_dim)
    shapes.update({
        "token_embedding.weight": (config.vocab_size, tw),
        "positional_embedding": (config.context_length, tw),
        "ln_final.weight": (tw,), "ln_final.bias": (tw,),
    })
    if config.text_projection:
        shapes["text_projection"] = (tw, config.embed_dim)
    shapes["logit_scale"] = ()
    if config.text_proj_bias:
        shapes["text_projection_bias"] = (config.embed_dim,)
    if config.init_logit_bias is not None:
        shapes["logit_bias"] = ()
    tower("visual.", vw, config.vision_layers, config.mlp_width("vision"))
    tower("", tw, config.text_layers, config.mlp_width("text"))
    return shapes


def first_mismatch(shapes: Dict[str, tuple], config: CLIPConfig) -> Optional[str]:
    """'parameter X has shape A, expected B' (or 'has no parameter X') for the first difference, else None."""
    for name, shape in expected_shapes(config).items():
        if name not in shapes:
            return f"has no parameter {name}"
        if tuple(shapes[name]) != shape:
            return f"parameter {name} has shape {tuple(shapes[name])}, expected {shape}"
    return None
