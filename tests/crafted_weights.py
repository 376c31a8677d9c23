"""Crafted conversion sources: a tiny valid OpenAI-named state dict with chosen tensors replaced or removed,
saved with torch (shared by the bad-input and full-disk tests), and OpenAI names rewritten as Hugging Face's."""
from pathlib import Path

import numpy as np


def tiny_shapes_config():
    """OpenAI-named shapes of a very small ViT (a few KB per file), for crafted conversion sources."""
    from clip.model.architectures import CLIPConfig
    from clip.model.convert import expected_shapes

    return expected_shapes(CLIPConfig(embed_dim=8, image_size=32, patch_size=16, vision_width=64, vision_layers=1,
                                      vision_heads=1, context_length=8, vocab_size=16, text_width=64,
                                      text_layers=1, text_heads=1))


def tiny_model_json(path: Path) -> str:
    """The crafted sources' architecture as an open_clip model config, for `--model` (a plain state dict does not
    say its activation)."""
    import json

    path.write_text(json.dumps({"embed_dim": 8, "quick_gelu": True,
                                "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 64,
                                               "patch_size": 16},
                                "text_cfg": {"context_length": 8, "vocab_size": 16, "width": 64, "heads": 1,
                                             "layers": 1}}))
    return str(path)


def torch_save(path: Path, tensors: dict) -> str:
    import torch

    torch.save({k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v, np.float32)))
                for k, v in tensors.items()}, str(path))
    return str(path)


def crafted_state(**changed) -> dict:
    """A tiny valid state dict (numpy) with some tensors replaced (None removes one)."""
    tensors = {k: np.zeros(s, np.float32) for k, s in tiny_shapes_config().items()}
    for key, value in changed.items():
        key = key.replace("__", ".")
        if value is None:
            tensors.pop(key)
        else:
            tensors[key] = value
    return tensors


def hf_names(state: dict, config) -> dict:
    """OpenAI names -> Hugging Face CLIPModel names for `config` (a CLIPConfig), written from HF's published
    layout (independent of clip.convert): q/k/v split out of in_proj, projections stored transposed as Linear
    weights. Shared by the conversion and architecture tests."""
    out = {}
    projections = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
    for name, value in state.items():
        value = np.asarray(value)
        if name in projections:
            out[projections[name]] = value.T
            continue
        tower, rest = ("vision_model", name[len("visual."):]) if name.startswith("visual.") else ("text_model", name)
        fixed = {"class_embedding": "embeddings.class_embedding", "conv1.weight": "embeddings.patch_embedding.weight",
                 "positional_embedding": "embeddings.position_embedding.weight",
                 "token_embedding.weight": "embeddings.token_embedding.weight", "logit_scale": None}
        if rest in fixed:
            out[f"{tower}.{fixed[rest]}" if fixed[rest] else "logit_scale"] = value
            continue
        if rest.startswith(("ln_pre.", "ln_post.", "ln_final.")):
            norm, param = rest.split(".")
            hf_norm = {"ln_pre": "pre_layrnorm", "ln_post": "post_layernorm", "ln_final": "final_layer_norm"}[norm]
            out[f"{tower}.{hf_norm}.{param}"] = value
            continue
        _, _, index, *part = rest.split(".")
        layer = f"{tower}.encoder.layers.{index}"
        part = ".".join(part)
        if part.startswith("attn.in_proj_"):
            kind = part[len("attn.in_proj_"):]
            for letter, chunk in zip("qkv", np.split(value, 3, axis=0)):
                out[f"{layer}.self_attn.{letter}_proj.{kind}"] = chunk
            continue
        mapped = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                  "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}[part.rsplit(".", 1)[0]]
        out[f"{layer}.{mapped}.{part.rsplit('.', 1)[1]}"] = value
    out["text_model.embeddings.position_ids"] = np.arange(config.context_length, dtype=np.int64)[None]
    out["vision_model.embeddings.position_ids"] = np.arange(config.grid_size ** 2 + 1, dtype=np.int64)[None]
    return out
