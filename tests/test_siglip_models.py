"""open_clip's SigLIP models: timm's class-token-free trunk with MAP pooling, the bidirectional text tower
pooled at the last position with a biased projection, the logit bias, and SigLIP's squash preprocessing.

Reference: open_clip 3.3.0 + timm 1.0.31 built with random weights (biases and norms perturbed). The towers
keep every real knob (patch 16, head width 64 or 72, MLP ratio 3.7362, exact or tanh GELU per tower, eps 1e-6,
context 64 or 16) on 2 heads, 1-2 blocks and 32 px images (the knobs act per block and per head): each trunk is
registered with timm under a test name and added to the shipped table of timm trunks for the module, so the
conversion reads the Hub's `open_clip_config.json` beside the weights as it does for the real names."""
import copy
import json
import re

import mindspore as ms
import numpy as np
import pytest
import torch
from PIL import Image

import clip
import openclip_reference as ref
from clip.model import architectures, weights
from clip.model.architectures import PRESETS, from_open_clip
from clip.model.convert import main as convert_main
from launcher.errors import UserError
from training_runs import function_part

# timm's trunk arguments at 128 wide (2 heads of 64, B/16's head width) and 144 wide (2 heads of 72, SO400M's)
B16 = {"patch_size": 16, "embed_dim": 128, "num_heads": 2, "class_token": False, "global_pool": "map"}
SO400M_16 = {"patch_size": 16, "embed_dim": 144, "num_heads": 2, "mlp_ratio": 3.7362, "class_token": False,
             "global_pool": "map", "act_layer": "gelu_tanh"}
SIGLIP_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                     "resize_mode": "squash", "size": 32}
NARROW_TEXT = {"width": 128, "heads": 2, "vocab_size": 1000}
# case -> (open_clip name whose text_cfg is kept, trunk args (timm's, reduced), text overrides)
CASES = {
    "ViT-B-16-SigLIP": ("ViT-B-16-SigLIP", dict(B16, depth=2), dict(NARROW_TEXT, layers=2)),
    # SigLIP2: exact GELU in the trunk, tanh GELU in the text tower
    "ViT-B-16-SigLIP2": ("ViT-B-16-SigLIP2", dict(B16, depth=1), dict(NARROW_TEXT, layers=1)),
    # heads of 72, MLP ratio 3.7362, tanh GELU in both towers
    "ViT-SO400M-16-SigLIP2-256": ("ViT-SO400M-16-SigLIP2-256", dict(SO400M_16, depth=1),
                                  {"width": 144, "heads": 2, "layers": 1, "vocab_size": 1000, "context_length": 16}),
    # no text projection (proj_type none): the pooled token is the text embedding; tanh trunk, exact-GELU text
    "ViT-SO400M-16-SigLIP-i18n-256": ("ViT-SO400M-16-SigLIP-i18n-256", dict(SO400M_16, depth=1),
                                      {"width": 144, "heads": 2, "layers": 1, "vocab_size": 1000}),
    # OpenAI's BPE fits this vocabulary: the one predict runs on
    "BPE text": ("ViT-B-16-SigLIP", {"patch_size": 16, "embed_dim": 64, "num_heads": 2, "depth": 1,
                                     "class_token": False, "global_pool": "map"},
                 {"layers": 1, "width": 64, "heads": 2, "vocab_size": 49408, "context_length": 16,
                  "hf_tokenizer_name": None, "tokenizer_kwargs": None}),
}


def close(ours, theirs, what):
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= 1e-5 * scale, (what, np.abs(ours - theirs).max() / scale)


@pytest.fixture(scope="module")
def trunks():
    """The reduced trunks, known to timm (open_clip builds them) and to our table of timm trunks."""
    with pytest.MonkeyPatch.context() as patch:
        for name, (_, args, _) in CASES.items():
            timm_name = "test_siglip_" + name.lower().replace("-", "_").replace(" ", "_")
            ref.register_timm_vit(timm_name, img_size=32, **args)
            patch.setitem(architectures._TIMM_MODELS, timm_name, {"model_args": args, "img_size": 32})
        yield


@pytest.fixture(scope="module")
def case(trunks, tmp_path_factory):
    """case name -> {"cfg", "model" (open_clip's), "ckpt" (converted by the command with the Hub's
    open_clip_config.json beside the weights, no --model), "pixels", "tokens", "image", "text"}."""
    built = {}

    def get(name):
        if name not in built:
            base, _, text = CASES[name]
            cfg = copy.deepcopy(ref.model_cfg(base))
            cfg["vision_cfg"].update(image_size=32, timm_model_name="test_siglip_" + name.lower().replace(
                "-", "_").replace(" ", "_"))
            cfg["text_cfg"].update(text)
            cfg["text_cfg"] = {k: v for k, v in cfg["text_cfg"].items() if v is not None}
            cfg["embed_dim"] = CASES[name][1]["embed_dim"]  # no image projection: the trunk's width
            model = ref.create(cfg)
            folder = tmp_path_factory.mktemp("siglip")
            torch.save(ref.state_dict(model), folder / "open_clip_pytorch_model.bin")
            (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg,
                                                                      "preprocess_cfg": SIGLIP_PREPROCESS}))
            ckpt = str(folder / "model.ckpt")
            assert convert_main([str(folder / "open_clip_pytorch_model.bin"), ckpt]) == 0
            rng = np.random.default_rng(1)
            pixels = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
            context = cfg["text_cfg"]["context_length"]
            tokens = rng.integers(1, cfg["text_cfg"]["vocab_size"], (2, context)).astype(np.int32)
            tokens[0, context // 2:] = 0  # padding after a short text: attended to and pooled over
            image, text_embeddings = ref.embeddings(model, pixels, tokens)
            built[name] = {"cfg": cfg, "model": model, "folder": folder, "ckpt": ckpt, "pixels": pixels,
                           "tokens": tokens, "image": image, "text": text_embeddings}
        return built[name]
    return get


@pytest.mark.parametrize("name", [n for n in CASES if n != "BPE text"])
def test_embeddings_equal_open_clip_from_the_checkpoint_alone(case, name):
    c = case(name)
    model = clip.create_model(checkpoint=c["ckpt"])  # the architecture the checkpoint carries
    config = model.config
    assert config == from_open_clip(c["cfg"], name)
    assert (config.vision_pool, config.text_pool, config.text_causal_mask, config.vision_projection,
            config.preprocess) == ("map", "last", False, False, "siglip")
    assert float(model.logit_bias.asnumpy()) == pytest.approx(c["model"].logit_bias.detach().item(), abs=0)
    close(model.encode_image(ms.Tensor(c["pixels"])).asnumpy(), c["image"], f"{name} image")
    close(model.encode_text(ms.Tensor(c["tokens"])).asnumpy(), c["text"], f"{name} text")
    if name == "ViT-B-16-SigLIP2":
        assert (config.activation, config.text_activation) == ("gelu", "gelu_tanh")
    assert (config.text_projection, config.text_proj_bias) == ((False, False) if "i18n" in name else (True, True))
    if name == "ViT-SO400M-16-SigLIP2-256":
        assert (config.vision_heads, config.mlp_width("vision"), config.activation) == (2, 538, "gelu_tanh")


def test_predict_gives_open_clips_sigmoid_probabilities_on_whole_token_rows(case, tmp_path, capsys):
    """`clip.predict` on a SigLIP checkpoint: each label's sigmoid(exp(scale) * cos + bias) as open_clip
    computes it from the squashed, 0.5-normalised image and the untrimmed token rows (trimming the padding
    would change every text embedding of a model without a causal mask)."""
    from clip.eval.encode import encode_texts
    from clip.eval.predict import main as predict

    c = case("BPE text")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    labels = ["cat", "dog", "a very long label with many words in it"]
    squashed = np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC), np.float32) / np.float32(255)
    pixels = ((squashed - np.float32(0.5)) / np.float32(0.5)).transpose(2, 0, 1)[None]
    tokens = clip.tokenize([f"a photo of a {label}." for label in labels], context_length=16)
    with torch.no_grad():
        m = c["model"]
        img = m.encode_image(torch.from_numpy(pixels), normalize=True).double()
        txt = m.encode_text(torch.from_numpy(np.asarray(tokens, np.int64)), normalize=True).double()
        logits = m.logit_scale.exp().double() * img @ txt.T + m.logit_bias.double()
        expected = dict(zip(labels, torch.sigmoid(logits)[0].numpy()))
    model = clip.create_model(checkpoint=c["ckpt"])
    close(encode_texts(model, [f"a photo of a {label}." for label in labels]), m.encode_text(
        torch.from_numpy(np.asarray(tokens, np.int64))).detach().numpy(), "encode_texts")
    capsys.readouterr()  # the conversion's summary line
    assert predict(["--checkpoint", c["ckpt"], "--image", str(tmp_path / "x.png"), "--labels", ",".join(labels),
                    "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert {p["label"]: pytest.approx(expected[p["label"]], abs=1e-5) for p in row["predictions"]} == expected


def test_timm_trunk_table_is_timms_own(monkeypatch):
    """The shipped trunk arguments are timm 1.0.31's entry points' (read by calling each entry point with the
    builder intercepted: no model is built), at timm's default input size, the size open_clip builds."""
    ref.install_torchvision_stand_in()
    import timm.models
    import timm.models.vision_transformer as vit

    class Captured(Exception):
        """Carries the keyword arguments timm's entry point would build its trunk with."""

    def capture(variant, pretrained=False, **kwargs):
        raise Captured(kwargs)

    monkeypatch.setattr(vit, "_create_vision_transformer", capture)
    shipped = json.loads((architectures.resources.files("clip") / "assets/open_clip_models.json").read_text())
    assert len(shipped["timm_models"]) == 16
    for name, entry in shipped["timm_models"].items():
        with pytest.raises(Captured) as got:
            timm.models.model_entrypoint(name)(pretrained=False)
        assert got.value.args[0] == entry["model_args"], name
        assert timm.models.get_pretrained_cfg(name).input_size[1:] == (entry["img_size"],) * 2, name
    for name in ("ViT-B-16-SigLIP", "ViT-B-16-SigLIP-512", "ViT-L-16-SigLIP-384", "ViT-SO400M-14-SigLIP",
                 "ViT-SO400M-14-SigLIP-384", "ViT-B-16-SigLIP2", "ViT-gopt-16-SigLIP2-384"):
        assert PRESETS[name].preprocess == "siglip" and PRESETS[name].vision_pool == "map", name
    assert PRESETS["ViT-SO400M-14-SigLIP-384"].grid_size == 27  # 384 px on 14 px patches: timm drops 6 px
    assert PRESETS["ViT-B-32"].preprocess == "openai" and PRESETS["ViT-B-32"].vision_pool == "class"


@pytest.mark.parametrize("change, message", [
    ({"vision_cfg": {"timm_model_name": "vit_base_patch16_224"}},
     'vision_cfg.timm_model_name = "vit_base_patch16_224" is not supported here \\(only SigLIP'),
    ({"vision_cfg": {"timm_pool": "avg"}}, 'vision_cfg.timm_pool = "avg" is not supported here with a timm trunk'),
    ({"vision_cfg": {"width": 512}}, "vision_cfg.width is not used with a timm trunk"),
    ({"vision_cfg": {"image_size": 256}}, "vision_cfg.image_size = 256, but timm builds vit_base_patch16_siglip_224 "
                                          "at 224"),
    ({"text_cfg": {"proj_type": "mlp"}}, 'text_cfg.proj_type = "mlp" is not supported here \\(only "linear" or "none"'),
    ({"text_cfg": {"pool_type": "eos"}}, 'text_cfg.pool_type = "eos" is not supported here \\(only "argmax" or '
                                         '"last"'),
    ({"text_cfg": {"no_causal_mask": 1}}, "text_cfg.no_causal_mask = 1 is not supported here \\(only false or true"),
    ({"preprocess_cfg": {"resize_mode": "longest"}}, 'preprocess_cfg.resize_mode = "longest" is not supported'),
    ({"preprocess_cfg": {"resize_mode": "squash", "mean": [0.4, 0.5, 0.5]}},
     "preprocess_cfg.mean = \\[0.4, 0.5, 0.5\\] is not supported here with resize_mode \"squash\""),
])
def test_open_clip_config_beside_the_weights_refuses_by_key(tmp_path, capsys, change, message):
    """Conversion reads the Hub's open_clip_config.json first: a knob not built is one line naming the key,
    exit 2, and no checkpoint written (the weights are never read past their names)."""
    cfg = copy.deepcopy(ref.model_cfg("ViT-B-16-SigLIP"))
    data = {"model_cfg": cfg, "preprocess_cfg": dict(SIGLIP_PREPROCESS, size=224)}
    for key, value in change.items():
        (data if key == "preprocess_cfg" else cfg)[key].update(value)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(data))
    torch.save({"visual.trunk.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)},
               tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(SystemExit) as exc:
        convert_main([str(tmp_path / "open_clip_pytorch_model.bin"), str(tmp_path / "out.ckpt")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert "open_clip_config.json" in err and re.search(message, err), err
    assert not (tmp_path / "out.ckpt").exists()


def test_a_damaged_siglip_state_dict_or_checkpoint_is_one_line(case, tmp_path, capsys):
    """A SigLIP state dict without its attention pool's latent, or with a kv weight of the wrong shape, is
    refused naming the tensor; so is a converted checkpoint missing one."""
    c = case("ViT-B-16-SigLIP")
    state = ref.state_dict(c["model"])
    (tmp_path / "open_clip_config.json").write_text((c["folder"] / "open_clip_config.json").read_text())
    for edit, message in (
            (lambda s: s.pop("visual.trunk.attn_pool.latent"), "missing tensor visual.attn_pool.latent required"),
            (lambda s: s.update({"visual.trunk.attn_pool.kv.weight": torch.zeros(768, 768)}),
             "tensor visual.attn_pool.kv.weight has shape \\(768, 768\\), custom expects \\(256, 128\\)")):
        broken = dict(state)
        edit(broken)
        torch.save(broken, tmp_path / "open_clip_pytorch_model.bin")
        with pytest.raises(SystemExit) as exc:
            convert_main([str(tmp_path / "open_clip_pytorch_model.bin"), str(tmp_path / "out.ckpt")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and re.search(message, err), err
        assert not (tmp_path / "out.ckpt").exists()
    stored = weights.read(c["ckpt"])
    kept = {k: v for k, v in stored.items() if k in weights.parameter_shapes(stored) and k != "visual.attn_pool.q.bias"}
    weights.write(str(tmp_path / "damaged.ckpt"), [{"name": k, "data": v} for k, v in kept.items()],
                  architecture=weights.architecture(stored, c["ckpt"]))
    with pytest.raises(UserError, match="has no parameter visual.attn_pool.q.bias$"):
        clip.create_model(checkpoint=str(tmp_path / "damaged.ckpt"))


def test_patch_dropout_without_a_class_token_keeps_timms_token_order(case):
    """Patch dropout on a trunk with no class token keeps just the listed patches (timm's PatchDropout with no
    prefix tokens), after the position embedding, and MAP pools over them: the timm trunk run on the same
    gathered tokens gives the same embedding."""
    c = case("ViT-B-16-SigLIP")
    model = clip.create_model(checkpoint=c["ckpt"])
    keep = np.array([[0, 2, 3], [1, 2, 3]], np.int32)  # 3 of the 4 patches of a 32 px image on 16 px patches
    trunk = c["model"].visual.trunk
    with torch.no_grad():
        x = trunk._pos_embed(trunk.patch_embed(torch.from_numpy(c["pixels"])))
        x = torch.stack([x[i, torch.from_numpy(keep[i]).long()] for i in range(2)])
        expected = trunk.attn_pool(trunk.norm(trunk.blocks(x))).numpy()
    close(model.encode_image(ms.Tensor(c["pixels"]), ms.Tensor(keep)).asnumpy(), expected, "patch dropout")
    assert np.abs(expected - c["image"]).max() > 1e-3  # dropping a patch changes the embedding


def test_image_lock_groups_are_timms(case):
    """open_clip locks a timm trunk by timm's own layer groups (TimmModel.lock: group_matcher): the stem, each
    block, the last block with the final norm, then the attention pool; our groups of the converted names are
    the same, so `model.lock_image_unlocked_groups` means what it means in open_clip."""
    from timm.models._manipulate import group_parameters

    from clip.model.convert import timm_to_openai
    from clip.model.groups import lock_group

    c = case("ViT-B-16-SigLIP")
    trunk = c["model"].visual.trunk
    timm_groups = {f"visual.trunk.{name}": group for group, names in group_parameters(
        trunk, trunk.group_matcher()).items() for name in names}
    ours = {name: lock_group(next(iter(timm_to_openai({name: np.zeros(1)}))), 2) for name in timm_groups}
    assert ours == timm_groups and set(ours.values()) == {0, 1, 2, 3}


def test_another_resolution_resizes_the_patch_table_as_timm_does(case):
    """`image_size` other than the checkpoint's: the trunk's position table (no class row) is resampled as
    timm's resample_abs_pos_embed does it (antialiased bicubic), and the model runs at the new size."""
    from timm.layers import resample_abs_pos_embed

    c = case("ViT-B-16-SigLIP")
    model = clip.create_model(checkpoint=c["ckpt"], image_size=64)
    table = c["model"].visual.trunk.pos_embed.detach()
    expected = resample_abs_pos_embed(table, [4, 4], num_prefix_tokens=0)[0].numpy()
    close(model.visual.positional_embedding.asnumpy(), expected, "resized table")
    assert model.encode_image(ms.Tensor(np.zeros((1, 3, 64, 64), np.float32))).shape == (1, 128)


def _function_part(name, value):
    """training_runs.function_part, plus the key half of the attention pool's kv bias: like the key third of
    in_proj_bias it shifts every score of a query row, which softmax ignores, so only float noise reaches it."""
    if name == "visual.attn_pool.kv.bias":
        return value[value.shape[0] // 2:]
    return function_part(name, value)


def _torch_siglip_training(model, batches, lrs, t, decayed, dtype):
    """open_clip's model + SigLipLoss + torch.optim.AdamW, logit_scale clamped to [0, ln 100] after each step
    (as our step and open_clip's training do); returns (losses, final parameters under our names)."""
    from clip.loss.contrastive import LOGIT_SCALE_MAX
    from clip.model.convert import linear_text_projection, timm_to_openai

    model = copy.deepcopy(model).to(dtype).train()
    loss_fn = ref.import_open_clip().loss.SigLipLoss()
    params = dict(model.named_parameters())
    groups = [{"params": [p for n, p in params.items() if decayed[n]], "weight_decay": t.weight_decay},
              {"params": [p for n, p in params.items() if not decayed[n]], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    losses = []
    for lr, (images, tokens) in zip(lrs, batches):
        for group in opt.param_groups:
            group["lr"] = float(lr)
        loss = loss_fn(*model(torch.from_numpy(images).to(dtype), torch.from_numpy(tokens.astype(np.int64))))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        losses.append(loss.item())
    final = {n: p.detach().double().numpy() for n, p in model.named_parameters()}
    return losses, linear_text_projection(timm_to_openai(final))


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["native", "stock"])
def test_training_the_siglip_towers_matches_open_clip(case, profile, monkeypatch):
    """4 graph-mode steps of our train step (clip.train.build_train_step with SigmoidLoss and our AdamW, as the
    loop builds them, in CPU's native profile and in the stock one Ascend and GPU run) on the converted tiny
    ViT-B-16-SigLIP against open_clip's model + SigLipLoss +
    torch.optim.AdamW on the same fixed batches, learning rates and hyper-parameters: the same per-step loss
    (1e-5 relative) and the same parameters, trunk, attention pool, text tower, logit_scale and logit_bias
    included, within 3 x open_clip's own float32-vs-float64 difference.

    Weight decay in the torch reference follows OUR rule, clip.train.optim.decays on our name and shape: every
    matrix but logit_scale, so timm's pos_embed, patch embedding and the attention pool's latent are decayed;
    biases, norms and logit_bias are not. The torch groups are built from that rule, and open_clip's tensor of
    each parameter is checked to have the same number of dimensions as ours (>= 2 or not) so the rule means the
    same on both sides."""
    from clip import profiles
    from clip.config import load_config
    from clip.loss.sigmoid import SigmoidLoss
    from clip.model.convert import linear_text_projection, timm_to_openai
    from clip.parallel.distributed import grad_reducer
    from clip.train import build_train_step
    from clip.train.optim import build_optimizer, decays, lr_schedule

    c = case("ViT-B-16-SigLIP")
    t = load_config(None, ["train.lr=1e-3", "train.warmup_steps=2", "train.min_lr=1e-4"]).train
    steps, batch, context = 4, 4, c["cfg"]["text_cfg"]["context_length"]
    lrs = lr_schedule(t.lr_schedule, t.lr, t.min_lr, t.warmup_steps, steps).astype(np.float32)
    rng = np.random.default_rng(29)
    batches = []
    for _ in range(steps):
        tokens = rng.integers(1, c["cfg"]["text_cfg"]["vocab_size"], (batch, context)).astype(np.int32)
        tokens[:, context // 2:] = 0  # texts padded to the context, as the pipeline pads them: pooled at a pad
        batches.append((rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), tokens))

    monkeypatch.setenv("CLIP_PROFILE", profile)
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        assert profiles.cache_fields()["profile"] == profile
        model = clip.create_model(checkpoint=c["ckpt"])
        optimizer = build_optimizer(model, "adamw", t.weight_decay, t.beta1, t.beta2, t.eps)
        step = build_train_step(t, model, SigmoidLoss(model.logit_bias), optimizer,
                                grad_reducer(optimizer.parameters))
        ours_losses = [float(step(ms.Tensor(images), ms.Tensor(tokens), ms.Tensor(lr))[0].asnumpy())
                       for lr, (images, tokens) in zip(lrs, batches)]
    finally:
        ms.set_context(mode=previous)
    ours = {p.name: p.asnumpy().astype(np.float64) for p in model.trainable_params()}

    shapes = {n: p.shape for n, p in c["model"].named_parameters()}
    renamed = linear_text_projection(timm_to_openai({n: np.array(n) for n in shapes}))  # each value its name
    names = {str(source): name for name, source in renamed.items()}  # open_clip's name -> ours
    assert sorted(names.values()) == sorted(ours)
    decayed = {n: decays(names[n], ours[names[n]].ndim) for n in shapes}
    assert all(decayed[n] == (len(shape) >= 2) for n, shape in shapes.items() if "logit" not in n)
    assert decayed["visual.trunk.pos_embed"] and decayed["visual.trunk.attn_pool.latent"]
    assert not decayed["logit_bias"] and not decayed["logit_scale"]

    exact_losses, exact = _torch_siglip_training(c["model"], batches, lrs, t, decayed, torch.float64)
    _, single = _torch_siglip_training(c["model"], batches, lrs, t, decayed, torch.float32)
    worst = max(abs(a - b) / b for a, b in zip(ours_losses, exact_losses))
    assert worst <= 1e-5, (ours_losses, exact_losses)

    def max_diff(a, b):
        return max((float(np.abs(_function_part(k, a[k].reshape(b[k].shape)) - _function_part(k, b[k])).max()), k)
                   for k in b)

    floor, _ = max_diff(single, exact)
    assert floor > 0
    diff, key = max_diff(ours, exact)
    assert diff <= 3 * floor, f"{key} ends {diff:.3g} from open_clip's, over 3 x its float32 noise {floor:.3g}"
    start = linear_text_projection(timm_to_openai({n: p.detach().double().numpy()
                                                   for n, p in c["model"].named_parameters()}))
    moved, _ = max_diff(start, exact)
    assert moved > 30 * floor  # the steps moved the parameters far beyond the bound
