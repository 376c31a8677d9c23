"""Crafted conversion sources: a tiny valid OpenAI-named state dict with chosen tensors replaced or removed,
saved with torch. Shared by the bad-input and full-disk tests."""
from pathlib import Path

import numpy as np


def tiny_shapes_config():
    """OpenAI-named shapes of a very small ViT (a few KB per file), for crafted conversion sources."""
    from clip.model.architectures import CLIPConfig
    from clip.model.convert import expected_shapes

    return expected_shapes(CLIPConfig(embed_dim=8, image_size=32, patch_size=16, vision_width=64, vision_layers=1,
                                      vision_heads=1, context_length=8, vocab_size=16, text_width=64,
                                      text_layers=1, text_heads=1))


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
