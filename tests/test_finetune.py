"""Fine-tuning options in-process: locked towers group parameters exactly as open_clip 3.3.0 does (checked
against open_clip's own lock on random-weight models of the same shapes), layer-wise learning-rate decay and
per-tower rates give each parameter its documented scale, AdamW steps each parameter at its group's rate (torch
AdamW with one parameter group per rate), and the EMA equals its closed form. The runs are in
tests/test_finetune_runs.py."""
import types

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Parameter, ParameterTuple, Tensor, nn

import openclip_reference as ref
from clip.model import create_model, groups
from clip.train.ema import EMA
from clip.train.optim import GradientUpdate, build_optimizer, lr_schedule, lr_scales
from launcher.errors import UserError

from training_runs import TINY_GELU


def shaped(vision_layers: int, text_layers: int) -> dict:
    cfg = {**TINY_GELU, "vision_cfg": {**TINY_GELU["vision_cfg"], "layers": vision_layers, "width": 64},
           "text_cfg": {**TINY_GELU["text_cfg"], "layers": text_layers, "width": 32, "vocab_size": 500}}
    return cfg


def frozen_by_open_clip(model, tower: str, n: int) -> set:
    for p in model.parameters():
        p.requires_grad = True
    if tower == "image":
        model.lock_image_tower(unlocked_groups=n)
    else:
        model.lock_text_tower(unlocked_layers=n)
    return {name for name, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("vision_layers,text_layers", [(2, 2), (3, 1)])
def test_locked_groups_are_the_ones_open_clip_locks(vision_layers, text_layers):
    model = ref.create(shaped(vision_layers, text_layers))
    names = [name for name, _ in model.named_parameters()]
    config = types.SimpleNamespace(vision_layers=vision_layers, text_layers=text_layers)
    for tower, layers in (("image", vision_layers), ("text", text_layers)):
        for n in range(layers + 3):  # every count, up to the whole tower
            expected = frozen_by_open_clip(model, tower, n)
            if tower == "image":
                got = groups.locked(names, config, lock_image=True, image_unlocked=n)
            else:
                got = groups.locked(names, config, lock_text=True, text_unlocked=n)
            assert set(got) == expected, f"{tower} tower, {n} unlocked: {sorted(set(got) ^ expected)}"
        assert groups.locked(names, config, **{f"lock_{tower}": True}) and "logit_scale" not in expected


@pytest.fixture(scope="module")
def tiny():
    return create_model("clip_tiny")


def test_our_parameter_names_are_open_clips_and_locking_freezes_them(tiny):
    open_clip_names = {name for name, _ in ref.create(TINY_GELU).named_parameters()}
    ours = [p.name for p in tiny.get_parameters()]
    assert set(ours) == open_clip_names
    frozen = groups.lock_towers(tiny, lock_image=True, image_unlocked=1, lock_text=True, text_unlocked=2)
    try:
        trainable = {p.name for p in tiny.trainable_params()}
        assert trainable == {"visual.proj", "text_projection", "ln_final.weight", "ln_final.bias", "logit_scale"} | {
            n for n in ours if n.startswith("transformer.resblocks.1.")}
        assert trainable.isdisjoint(frozen) and len(trainable) + len(frozen) == len(ours)
    finally:
        for p in tiny.get_parameters():
            p.requires_grad = True
    with pytest.raises(UserError, match="model.lock_text_unlocked_layers: 5 groups: the model's text tower has 4"):
        groups.lock_towers(tiny, lock_text=True, text_unlocked=5)


def expected_scale(name: str, decay: float, image: float, text: float) -> float:
    """docs/training.md's table, written out: per tower, embeddings decay^(L+1), block i decay^(L-i), head 1."""
    if name == "logit_scale":
        return 1.0
    tower = image if name.startswith("visual.") else text
    if ".resblocks.0." in name:
        return tower * decay ** 2
    if ".resblocks.1." in name:
        return tower * decay
    head = ("visual.ln_post.", "visual.proj", "ln_final.", "text_projection")
    return tower * (1.0 if name.startswith(head) else decay ** 3)


def test_layer_decay_and_tower_rates_scale_each_parameter(tiny):
    names = [p.name for p in tiny.get_parameters()]
    scales = dict(zip(names, lr_scales(names, tiny.config, 1e-3, lr_image=2e-3, lr_text=5e-4, layer_decay=0.5)))
    for name in names:
        assert scales[name] == pytest.approx(expected_scale(name, 0.5, 2.0, 0.5), rel=1e-12), name
    # the ends, by name: the image embeddings decay most, the heads not at all
    assert scales["visual.conv1.weight"] == pytest.approx(2 * 0.125)
    assert scales["token_embedding.weight"] == scales["positional_embedding"] == pytest.approx(0.5 * 0.125)
    assert scales["visual.proj"] == 2.0 and scales["text_projection"] == 0.5 and scales["logit_scale"] == 1.0
    assert set(lr_scales(names, tiny.config, 1e-3)) == {1.0}


SHAPES = {"visual.proj": (6, 5), "visual.transformer.resblocks.0.mlp.c_fc.bias": (5,),
          "transformer.resblocks.1.attn.in_proj_weight": (4, 3), "logit_scale": ()}
SCALES = [2.0, 0.5, 0.3, 1.0]
WD, BETAS, EPS, STEPS = 0.1, (0.9, 0.98), 1e-6, 5


class Params(nn.Cell):
    def __init__(self, init):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple([Parameter(Tensor(v), name=k) for k, v in init.items()])


@pytest.fixture(scope="module")
def graph_mode():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=previous)


def test_adamw_steps_each_parameter_at_its_groups_rate(graph_mode):
    rng = np.random.default_rng(5)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES.values()] for _ in range(STEPS)]
    lrs = lr_schedule("cosine", 1e-2, 1e-3, 2, STEPS).astype(np.float32)
    model = Params(init)
    update = GradientUpdate(build_optimizer(model, "adamw", WD, *BETAS, EPS, SCALES))
    params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": WD if p.ndim >= 2 else 0.0} for p in params.values()],
                            betas=BETAS, eps=EPS)
    for g, lr in zip(grads, lrs):
        update(ms.mutable(tuple(Tensor(x) for x in g)), Tensor(lr))
        for group, scale in zip(opt.param_groups, SCALES):
            group["lr"] = float(lr) * scale
        for p, x in zip(params.values(), g):
            p.grad = torch.from_numpy(x)
        opt.step()
    for p in model.params:
        want = params[p.name].detach().numpy()
        np.testing.assert_allclose(p.asnumpy(), want, rtol=1e-6, atol=1e-6, err_msg=p.name)
        assert np.abs(p.asnumpy() - init[p.name]).max() > 1e-3  # every parameter moved


def test_ema_is_its_closed_form_over_five_steps_and_swaps_back_exactly(graph_mode):
    rng = np.random.default_rng(9)
    decay = 0.8
    values = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(6)]
    model = Params(values[0])
    ema = EMA(model.params, decay)
    for step in range(1, 6):  # the weights after optimiser step `step`, then the update
        for p in model.params:
            p.set_data(Tensor(values[step][p.name]))
        ema()
    averages = {a.name: a.asnumpy() for a in ema.averages}
    assert sorted(averages) == sorted(f"ema.{k}" for k in SHAPES)
    for name in SHAPES:
        closed = decay ** 5 * values[0][name].astype(np.float64) + sum(
            (1 - decay) * decay ** (5 - k) * values[k][name].astype(np.float64) for k in range(1, 6))
        np.testing.assert_allclose(averages[f"ema.{name}"], closed, rtol=1e-6, atol=1e-6, err_msg=name)
    raw = {p.name: p.asnumpy().copy() for p in model.params}
    with ema.swapped():
        for p in model.params:
            assert np.array_equal(p.asnumpy(), averages[f"ema.{p.name}"])
    for p in model.params:
        assert np.array_equal(p.asnumpy(), raw[p.name])
    assert all(np.array_equal(a.asnumpy(), averages[a.name]) for a in ema.averages)


def test_ema_weights_replace_the_raw_weights_they_average(tiny, tmp_path):
    from clip.model import load_model, weights

    raw = {p.name: p.asnumpy() for p in tiny.get_parameters()}
    locked = "visual.conv1.weight"  # no average, as for a locked parameter: keeps its stored value
    averages = {name: value + 0.5 for name, value in raw.items() if name != locked}
    entries = [{"name": n, "data": Tensor(v)} for n, v in raw.items()]
    entries += [{"name": f"ema.{n}", "data": Tensor(v)} for n, v in averages.items()]
    path = weights.write(str(tmp_path / "run.ckpt"), entries, architecture=tiny.config)
    for model, want in ((create_model(None, checkpoint=path), raw),
                        (create_model(None, checkpoint=path, ema_weights=True), {**raw, **averages}),
                        (load_model(path, ema_weights=True), {**raw, **averages})):
        got = {p.name: p.asnumpy() for p in model.get_parameters()}
        assert sorted(got) == sorted(raw)
        for name in raw:
            assert np.array_equal(got[name], want[name]), name

    assert weights.ema_weights({"a": 1, "ema.a": 2, "b": 3}, "x.ckpt") == {"a": 2, "b": 3}
    with pytest.raises(UserError, match=r"'x.ckpt' has the average ema.c but no parameter c"):
        weights.ema_weights({"a": 1, "ema.c": 2}, "x.ckpt")
    with pytest.raises(UserError, match=r"'x.ckpt' holds no moving averages"):
        weights.ema_weights({"a": 1}, "x.ckpt")
    with pytest.raises(UserError, match="no checkpoint to take the moving averages from"):
        create_model("clip_tiny", ema_weights=True)
