"""open_clip's SigLIP training as the reference of the SigLIP runs: open_clip's model + `SigLipLoss` +
`torch.optim.AdamW`, fed the very batches `clip.train` feeds rank 0 of a one-card run, in float32 and float64
(the two bound the float noise of the comparison).

The model is a tiny open_clip config with `init_logit_bias` (TINY_SIGLIP) built with random weights and
open_clip's `--siglip` start (logit_scale ln 10); `converted_siglip_checkpoint` converts it for our runs.
"""
import json
import math
from pathlib import Path

import numpy as np

from training_runs import TINY_GELU

TINY_SIGLIP = {**TINY_GELU, "init_logit_bias": -10.0}
SEED = 13


def open_clip_model():
    import openclip_reference as ref

    return ref.create(TINY_SIGLIP, seed=SEED, init_logit_scale=math.log(10.0))


def converted_siglip_checkpoint(folder: Path) -> Path:
    """The TINY_SIGLIP model converted with `--model <its JSON>`: the checkpoint carries the architecture (with
    its logit bias), so the runs name no model."""
    import torch

    import openclip_reference as ref
    from clip.model.convert import convert

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(open_clip_model()), folder / "open_clip_pytorch_model.bin")
    (folder / "tiny_siglip.json").write_text(json.dumps(TINY_SIGLIP))
    result = convert(str(folder / "open_clip_pytorch_model.bin"), str(folder / "tiny_siglip.ckpt"),
                     str(folder / "tiny_siglip.json"))
    assert result.config.init_logit_bias == -10.0 and "logit_bias" in result.tensors
    return folder / "tiny_siglip.ckpt"


def one_card_batches(overrides, steps: int):
    """The (images, tokens) of the first `steps` steps of a one-card `clip.train` run with these overrides."""
    from clip.config import load_config
    from clip.data import build_train_source
    from clip.data.pipeline import steps_per_epoch, train_batches

    cfg = load_config(None, [o for o in overrides if not o.startswith(("model.", "train.resume"))])
    t, source = cfg.train, build_train_source(cfg.data.train)
    per_rank = t.batch_size * t.accum_steps
    per_epoch = steps_per_epoch(len(source), per_rank, 1)
    context = TINY_SIGLIP["text_cfg"]["context_length"]
    size = TINY_SIGLIP["vision_cfg"]["image_size"]
    batches = []
    for epoch in range(math.ceil(steps / per_epoch)):
        for images, tokens in train_batches(source, image_size=size, context_length=context, batch_size=per_rank,
                                            rank=0, world_size=1, epoch=epoch, seed=t.seed, num_workers=1):
            batches.append((np.array(images), np.array(tokens)))
    return batches[:steps], cfg.train


def train(batches, t, dtype: str) -> dict:
    """open_clip's SigLIP step on every batch: SigLipLoss, AdamW with weight decay on matrices (as
    clip.train.optim.decays), the learning rate of clip.train.optim.lr_schedule, logit_scale clamped to
    [0, ln 100] after each step as open_clip's training does. Returns the final parameters (OpenAI names)."""
    import torch

    import openclip_reference as ref
    from clip.train.optim import lr_schedule

    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    model = open_clip_model().to(torch_dtype).train()
    loss_fn = ref.import_open_clip().loss.SigLipLoss()
    params = dict(model.named_parameters())
    decay = [p for n, p in params.items() if p.ndim >= 2 and "logit_scale" not in n]
    rest = [p for n, p in params.items() if not (p.ndim >= 2 and "logit_scale" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    lrs = lr_schedule(t.lr_schedule, t.lr, t.min_lr, t.warmup_steps, t.max_steps).astype(np.float32)
    losses = []
    for step, (images, tokens) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = float(lrs[step])
        image, text, scale, bias = model(torch.from_numpy(images).to(torch_dtype),
                                         torch.from_numpy(tokens.astype(np.int64)))
        loss = loss_fn(image, text, scale, bias)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    return {n: p.detach().double().numpy() for n, p in model.named_parameters()}, losses
