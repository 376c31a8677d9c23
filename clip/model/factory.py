"""The one way a named architecture, a checkpoint or a model object becomes a CLIPModel."""
import os
from pathlib import Path
from typing import Optional, Union

import mindspore as ms
import numpy as np
from mindspore import Tensor

from clip.model.architectures import PRESETS, CLIPConfig, expected_shapes, get_config, infer_config
from clip.model.towers import CLIPModel
from clip.model.weights import read as read_checkpoint
from clip.model.weights import shapes as checkpoint_shapes
from launcher.errors import UserError

MODEL_DIR_ENV = "CLIP_MODEL_DIR"
OPENAI_FILES = {"clip_vit_b_32": "ViT-B-32.pt", "clip_vit_b_16": "ViT-B-16.pt", "clip_vit_l_14": "ViT-L-14.pt",
                "clip_vit_l_14@336": "ViT-L-14-336px.pt", "clip_tiny": "(no OpenAI release; train it)"}


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
