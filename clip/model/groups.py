"""Where each parameter sits in its tower, read from its OpenAI name: the layer groups that open_clip locks
(`--lock-image-unlocked-groups`, `--lock-text-unlocked-layers`) and the layer ids of layer-wise learning-rate
decay. Both are fixed by the names alone, so a converted checkpoint and a fresh model group alike.

open_clip 3.3.0 forms L + 2 groups per tower of L residual blocks (`VisionTransformer.lock`,
`lock_text_tower`): the embeddings, each block but the last, the last block together with the final
LayerNorm, and the projection; "N unlocked" leaves the last N of them trainable. LayerNorms are weights
like any other there (no separate freezing), and `logit_scale` belongs to neither tower, so it stays
trainable. Layer decay (BEiT) counts differently: the final LayerNorm goes with the projection (the head).
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

from launcher.errors import UserError

_BLOCK = re.compile(r"(?:^|\.)resblocks\.(\d+)\.")
IMAGE, TEXT = "image", "text"
# per tower: (embedding prefixes, final LayerNorm prefix, projection names). SigLIP's attention pool follows
# the final LayerNorm, as the projection does, so it goes with the projection; so does the text projection's bias.
_PARTS = {
    IMAGE: (("visual.conv1.", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre."),
            "visual.ln_post.", ("visual.proj", "visual.attn_pool.")),
    TEXT: (("token_embedding.", "positional_embedding"), "ln_final.", ("text_projection", "text_projection_bias")),
}
_TEXT_PREFIXES = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")


def tower_of(name: str) -> Optional[str]:
    """IMAGE, TEXT, or None for a parameter of neither tower (`logit_scale`)."""
    if name.startswith("visual."):
        return IMAGE
    if name.startswith(_TEXT_PREFIXES):
        return TEXT
    return None


def _part(name: str, tower: str) -> tuple[str, int]:
    """('embedding', 0), ('block', i), ('norm', 0) or ('projection', 0)."""
    embeddings, norm, projection = _PARTS[tower]
    block = _BLOCK.search(name)
    if block:
        return "block", int(block.group(1))
    if name.startswith(embeddings):
        return "embedding", 0
    if name.startswith(norm):
        return "norm", 0
    if any(name == p or (p.endswith(".") and name.startswith(p)) for p in projection):
        return "projection", 0
    raise ValueError(f"parameter {name!r} has no place in the {tower} tower")


def lock_group(name: str, layers: int) -> int:
    """open_clip's layer group of a tower parameter: 0 embeddings, i + 1 block i < L - 1, L the last block and
    the final LayerNorm, L + 1 the projection (L + 2 groups)."""
    part, index = _part(name, tower_of(name))
    if part == "block":
        return min(index + 1, layers)
    return {"embedding": 0, "norm": layers, "projection": layers + 1}[part]


def layer_id(name: str, layers: int) -> int:
    """BEiT's layer id of a tower parameter: 0 embeddings, i + 1 block i, L + 1 the head (final LayerNorm and
    projection)."""
    part, index = _part(name, tower_of(name))
    if part == "block":
        return index + 1
    return 0 if part == "embedding" else layers + 1


def tower_layers(config, tower: str) -> int:
    return config.vision_layers if tower == IMAGE else config.text_layers


def locked(names: Iterable[str], config, lock_image: bool = False, image_unlocked: int = 0,
           lock_text: bool = False, text_unlocked: int = 0) -> list[str]:
    """The names that stay frozen: in a locked tower, every parameter outside its last N groups."""
    unlocked = {IMAGE: image_unlocked, TEXT: text_unlocked}
    lock = {IMAGE: lock_image, TEXT: lock_text}
    frozen = []
    for name in names:
        tower = tower_of(name)
        if tower is None or not lock[tower]:
            continue
        layers = tower_layers(config, tower)
        if lock_group(name, layers) < layers + 2 - unlocked[tower]:
            frozen.append(name)
    return frozen


def lock_towers(model, lock_image: bool = False, image_unlocked: int = 0, lock_text: bool = False,
                text_unlocked: int = 0) -> list[str]:
    """Freeze the locked parameters of `model` (requires_grad False: no gradient, optimiser state or
    all-reduce, as everything downstream takes `model.trainable_params()`); returns their names."""
    config = model.config
    for key, n, tower in (("model.lock_image_unlocked_groups", image_unlocked, IMAGE),
                          ("model.lock_text_unlocked_layers", text_unlocked, TEXT)):
        groups = tower_layers(config, tower) + 2
        if n > groups:  # config validation checks named models; a checkpoint's architecture is known only now
            raise UserError(f"{key}: {n} groups: the model's {tower} tower has {groups}, expected 0..{groups}")
    params = {p.name: p for p in model.get_parameters()}
    names = locked(params, config, lock_image, image_unlocked, lock_text, text_unlocked)
    for name in names:
        params[name].requires_grad = False
    return names
