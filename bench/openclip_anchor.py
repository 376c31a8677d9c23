"""open_clip 3.3.0 as the benchmarks' reference: the model a user would otherwise train with, on torch.

open_clip's model code needs torchvision only at import time, for `torchvision.ops.misc.FrozenBatchNorm2d`
(ResNet towers, unused here) and a few names of `torchvision.transforms` (its preprocessing, unused here:
the benchmarks feed tensors). The PyPI torchvision wheels do not load beside the CPU torch on this machine
("operator torchvision::nms does not exist"), so when torchvision is missing a minimal stand-in providing
exactly those names is registered (tests/openclip_reference.py, the tests' open_clip reference: one stand-in
for both); anything that would really use one of them raises.

Architecture: open_clip's `-quickgelu` configuration (OpenAI's weights and our model use QuickGELU; its
plain configs use GELU): `ViT-B-32-quickgelu` for clip_vit_b_32, and `CLIP(..., quick_gelu=True)` with our
preset's shapes for the others (clip_tiny).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openclip_reference import import_open_clip  # noqa: E402  (one torchvision stand-in for tests and bench)

OPEN_CLIP_NAMES = {"clip_vit_b_32": "ViT-B-32-quickgelu", "clip_vit_b_16": "ViT-B-16-quickgelu",
                   "clip_vit_l_14": "ViT-L-14-quickgelu"}


def create(preset: str, config=None):
    """open_clip's CLIP with our preset's architecture (QuickGELU), random init, float32, train mode; `config`
    (a CLIPConfig) builds those shapes instead (a preset cut to fewer blocks)."""
    open_clip = import_open_clip()
    if preset in OPEN_CLIP_NAMES and config is None:
        model = open_clip.create_model(OPEN_CLIP_NAMES[preset], pretrained=None)
    else:
        from clip.model.architectures import get_config
        c = config or get_config(preset)
        vision = open_clip.CLIPVisionCfg(layers=c.vision_layers, width=c.vision_width,
                                         head_width=c.vision_width // c.vision_heads,
                                         patch_size=c.patch_size, image_size=c.image_size)
        text = open_clip.CLIPTextCfg(context_length=c.context_length, vocab_size=c.vocab_size,
                                     width=c.text_width, heads=c.text_heads, layers=c.text_layers)
        model = open_clip.CLIP(c.embed_dim, vision, text, quick_gelu=True)
    return model.float()


def optimizer(model, fused: bool, lr: float = 1e-4, weight_decay: float = 0.2):
    """torch.optim.AdamW as open_clip's training script builds it: decay on matrices only."""
    import torch
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)


def train_step(model, opt, rank: int = 0, world_size: int = 1):
    """open_clip's step: forward, ClipLoss, backward, AdamW, clamp of logit_scale to [0, ln 100]. With
    world_size > 1 `model` is wrapped in DistributedDataParallel and the loss is open_clip's sharded form
    (`--local-loss --gather-with-grad`, the counterpart of our `loss.mode: local`)."""
    import math

    import torch
    open_clip = import_open_clip()
    if world_size > 1:
        loss_fn = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank,
                                     world_size=world_size)
    else:
        loss_fn = open_clip.ClipLoss()
    clamped = getattr(model, "module", model)

    def step(images, tokens):
        image_features, text_features, logit_scale = model(images, tokens)
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            clamped.logit_scale.clamp_(0, math.log(100))
        return loss
    return step
