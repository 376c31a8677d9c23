"""The one way a named architecture, a checkpoint or a model object becomes a CLIPModel."""
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Optional, Union

import mindspore as ms
import numpy as np
from mindspore import Tensor

from clip.model import pos_embed
from clip.model.architectures import (DEFAULT_MODEL, MINDFORMERS, PRESETS, CLIPConfig, expected_shapes,
                                      get_config, infer_config, is_config_path, name_of, suggest)
from clip.model.towers import CLIPModel
from clip.model.weights import architecture as stored_architecture
from clip.model.weights import ema_weights as select_ema_weights
from clip.model.weights import parameter_shapes
from clip.model.weights import read as read_checkpoint
from clip.model.weights import shapes as checkpoint_shapes  # noqa: F401  (exported)
from launcher.errors import UserError

MODEL_DIR_ENV = "CLIP_MODEL_DIR"
OPENAI_FILES = {"clip_vit_b_32": "ViT-B-32.pt", "clip_vit_b_16": "ViT-B-16.pt", "clip_vit_l_14": "ViT-L-14.pt",
                "clip_vit_l_14@336": "ViT-L-14-336px.pt"}


def create_model(name_or_config: Union[str, CLIPConfig, None] = None, checkpoint: Optional[str] = None,
                 dtype: str = "float32", image_size: Optional[int] = None, init_logit_bias: Optional[float] = None,
                 init_logit_scale: Optional[float] = None, ema_weights: bool = False) -> CLIPModel:
    """A model by name (or open_clip JSON path, or CLIPConfig), with a checkpoint's weights; with no name, the
    architecture the checkpoint carries (older checkpoints: the OpenAI one its shapes imply). `image_size`
    other than the checkpoint's resizes its position embeddings (bicubic on the patch grid).

    `init_logit_bias` / `init_logit_scale` are what a loss asks of the model (SigLIP: a learnable bias, another
    starting temperature), as open_clip's create_model takes them: a model without a bias gets one starting at
    `init_logit_bias` (also when its checkpoint has none), and `init_logit_scale` is the log-temperature of a
    model that no checkpoint initialises. What the architecture or the checkpoint already holds wins.

    `ema_weights` takes a training checkpoint's moving averages (`ema.*`, train.ema_decay) instead of its raw
    weights, as timm's `--use-ema` does."""
    if dtype == "bfloat16" and ms.get_context("device_target") == "CPU":
        # Fail here with one line rather than deep inside the first forward pass.
        raise UserError("dtype bfloat16 needs an Ascend or GPU device: MindSpore's CPU kernels have no bfloat16 "
                        "MatMul; use float32 or float16 on CPU")
    if ema_weights and not checkpoint:
        raise UserError("EMA weights (model.ema_weights): no checkpoint to take the moving averages from; give "
                        "model.checkpoint (or --checkpoint) a training checkpoint of a run with train.ema_decay")
    params = read_checkpoint(checkpoint) if checkpoint else None
    if ema_weights:
        params = select_ema_weights(params, checkpoint)
    config = resolve_config(name_or_config, params, checkpoint)
    if image_size is not None and image_size != config.image_size:
        config = replace(config, image_size=image_size)
    if init_logit_bias is not None and config.init_logit_bias is None:
        config = replace(config, init_logit_bias=float(init_logit_bias))
        if params is not None and "logit_bias" not in params:
            params = {**params, "logit_bias": Tensor(np.float32(init_logit_bias))}
    if params is not None:  # checked before the model is built: a wrong file costs no memory and no time
        params = fit_positions(params, config)
        check_parameters(params, config, checkpoint)
    model = CLIPModel(config.with_dtype(dtype))
    if params is not None:
        for p in model.get_parameters():
            p.set_data(Tensor(params[p.name].asnumpy().astype(np.float32)))
    elif init_logit_scale is not None:
        model.logit_scale.set_data(Tensor(np.float32(init_logit_scale)))
    return model


def resolve_config(name_or_config, params: Optional[dict], checkpoint: Optional[str]) -> CLIPConfig:
    """Which architecture: the named one (which must agree with what the checkpoint carries), else the
    checkpoint's, else the default model's."""
    carried = stored_architecture(params, checkpoint) if params is not None else None
    if name_or_config is None:
        if carried is not None:
            return carried
        return infer_config(parameter_shapes(params)) if params is not None else get_config(DEFAULT_MODEL)
    config = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if carried is not None:
        differ = [f.name for f in fields(config) if f.name not in ("dtype", "image_size")
                  and getattr(config, f.name) != getattr(carried, f.name)]
        if differ:
            key = differ[0]
            named = name_or_config if isinstance(name_or_config, str) else name_of(config)
            raise UserError(f"checkpoint {checkpoint} holds {name_of(carried)} ({key} {getattr(carried, key)!r}), "
                            f"not {named} ({key} {getattr(config, key)!r}); leave the model name out to use the "
                            f"checkpoint's own")
    return config


def fit_positions(params: dict, config: CLIPConfig) -> dict:
    """The checkpoint's image position embeddings resized to the model's patch grid when only the grid differs."""
    key = "visual.positional_embedding"
    value = params.get(key)
    prefix = int(config.class_token)  # SigLIP's trunk has no class token row
    want = config.grid_size ** 2 + prefix
    if value is None or len(value.shape) != 2 or value.shape[0] == want or value.shape[1] != config.vision_width:
        return params
    array = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
    try:
        resized = pos_embed.resize(array.astype(np.float32), config.grid_size, prefix)
    except ValueError:
        return params  # not a square grid: check_parameters names the shape
    return {**params, key: Tensor(resized)}


def check_parameters(params: dict, config: CLIPConfig, checkpoint: str) -> None:
    """Every parameter of the model present in the checkpoint with the right shape, or a UserError naming it."""
    for name, shape in expected_shapes(config).items():
        if name not in params:
            raise UserError(f"checkpoint {checkpoint} has no parameter {name}")
        if tuple(params[name].shape) != shape:
            raise UserError(f"checkpoint {checkpoint}: parameter {name} has shape {tuple(params[name].shape)}, "
                            f"model {model_name(config)} expects {shape}")


def model_name(config: CLIPConfig) -> str:
    """The first name with this architecture (MindFormers' names first), or 'custom'."""
    return name_of(config)


def pretrained_path(name: str) -> Path:
    """Where `from_pretrained(name)` looks: $CLIP_MODEL_DIR/<name>.ckpt, by default under ~/.cache/mindclip."""
    root = os.environ.get(MODEL_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mindclip", "models")
    return Path(root) / f"{name}.ckpt"


def pretrained_checkpoint(name: Optional[str]) -> str:
    """The converted weights of model `name` in the model directory, or a UserError naming the expected file
    and the command that makes it."""
    name = name or DEFAULT_MODEL
    if name not in PRESETS:
        raise UserError(f"no converted weights for {name}: a model name is needed (or a checkpoint); {suggest(name)}")
    path = pretrained_path(name)
    if not path.is_file():
        if name in OPENAI_FILES:
            how = f"convert OpenAI's {OPENAI_FILES[name]} with: python -m clip.convert {OPENAI_FILES[name]} {path}"
        elif name in MINDFORMERS:
            how = "it has no released weights; train it"
        else:
            how = (f"convert its open_clip / Hugging Face weights with: python -m clip.convert "
                   f"open_clip_pytorch_model.bin {path} --model {name} (docs/models.md)")
        raise UserError(f"no converted weights for {name}: expected {path}; {how} "
                        f"(or set {MODEL_DIR_ENV} to the directory holding {path.name})")
    return str(path)


def load_model(model, checkpoint: Optional[str] = None, dtype: str = "float32", image_size: Optional[int] = None,
               ema_weights: bool = False):
    """The one way a model is made from what a user names: a CLIPModel as is, a model name (with the given
    checkpoint, else its converted weights in the model directory), an open_clip JSON config with a
    checkpoint, or a checkpoint path (the architecture it carries); `ema_weights` as for create_model."""
    if isinstance(model, CLIPModel):
        if checkpoint or ema_weights:
            raise UserError("pass either a model object or a checkpoint (and its EMA weights), not both")
        return model
    if not isinstance(model, (str, os.PathLike)) and model is not None:
        raise UserError(f"model: got {type(model).__name__}, expected a CLIPModel, model name or checkpoint")
    if model is None and checkpoint is None:
        raise UserError("no model: give a model name, a checkpoint path or a CLIPModel")
    model = os.fspath(model) if model is not None else None
    if model is not None and model not in PRESETS and checkpoint is None and not model.endswith(".json") and (
            os.sep in model or model.endswith(".ckpt") or os.path.exists(model)):
        model, checkpoint = None, model  # a path: checkpoint.read names what is wrong with it
    if model in PRESETS:  # a bare model name means its converted weights, as in MindFormers' pipeline
        return create_model(model, checkpoint=checkpoint or pretrained_checkpoint(model), dtype=dtype,
                            image_size=image_size, ema_weights=ema_weights)
    if model is not None and is_config_path(model):
        if checkpoint is None:
            raise UserError(f"model config {model} names an architecture, not weights: give a checkpoint too")
        return create_model(model, checkpoint=checkpoint, dtype=dtype, image_size=image_size, ema_weights=ema_weights)
    if model is not None and (checkpoint is not None or not os.path.isfile(model)):
        raise UserError(f"model {model!r} is neither a preset name nor a checkpoint file; {suggest(model)}")
    return create_model(None, checkpoint=model or checkpoint, dtype=dtype, image_size=image_size,
                        ema_weights=ema_weights)
