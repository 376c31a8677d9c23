"""open_clip's architectures: embeddings equal open_clip's own models (random weights, built by open_clip 3.3.0)
for each knob (exact and tanh GELU, QuickGELU, head width 80 with MLP ratio 4.9231, 256 px, LayerNorm eps),
through convert -> a checkpoint that carries its architecture -> create_model / pipeline / evaluation with no
name; the names and JSON configs, their one-line errors, and position embeddings resized as open_clip does.
Depths are reduced to 2 blocks per tower (the knobs act per block; depth only repeats them)."""
import copy
import json
import os

import mindspore as ms
import numpy as np
import pytest
import torch

import clip
import openclip_reference as ref
from clip.model.architectures import PRESETS, expected_shapes, from_open_clip, get_config, list_models
from clip.model.convert import convert, main, to_openai_parameters
from launcher.errors import UserError

SMALL = {"layers": 2}


def small(name, **vision):
    cfg = copy.deepcopy(ref.model_cfg(name))
    cfg["vision_cfg"].update(SMALL, **vision)
    cfg["text_cfg"].update(SMALL)
    return cfg


def tiny(**knobs):
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 160, "head_width": 80,
                                           "mlp_ratio": 4.9231, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}
    for key, value in knobs.items():
        if key in ("vision_cfg", "text_cfg"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


CASES = {
    "ViT-B-32 (gelu)": (lambda: small("ViT-B-32"), "gelu"),
    "ViT-B-32-256": (lambda: small("ViT-B-32-256"), "gelu"),
    "head_width 80, mlp_ratio 4.9231": (lambda: tiny(), "gelu"),
    "quick_gelu": (lambda: tiny(quick_gelu=True), "quick_gelu"),
    "gelu_tanh": (lambda: tiny(vision_cfg={"act_kwargs": {"approximate": "tanh"}},
                               text_cfg={"act_kwargs": {"approximate": "tanh"}}), "gelu_tanh"),
    "LayerNorm eps 1e-6": (lambda: tiny(vision_cfg={"norm_kwargs": {"eps": 1e-6}},
                                        text_cfg={"norm_kwargs": {"eps": 1e-6}}), "gelu"),
}


def inputs(cfg, n=2):
    size = cfg["vision_cfg"]["image_size"]
    pixels = np.random.default_rng(1).standard_normal((n, 3, size, size)).astype(np.float32)
    tokens = clip.tokenize(["a photo of a cat", "two dogs playing in the snow, at night"][:n],
                           context_length=cfg["text_cfg"].get("context_length", 77))
    return pixels, tokens


def close(ours, theirs, what):
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= 1e-5 * scale, (what, np.abs(ours - theirs).max() / scale)


@pytest.fixture(scope="module", params=list(CASES))
def converted(request, tmp_path_factory):
    """(case, open_clip config, checkpoint converted with --model <json>, open_clip's embeddings)."""
    build, activation = CASES[request.param]
    cfg = build()
    folder = tmp_path_factory.mktemp("arch")
    model = ref.create(cfg)
    torch.save(ref.state_dict(model), folder / "open_clip_pytorch_model.bin")
    (folder / "model.json").write_text(json.dumps(cfg))
    ckpt = folder / "model.ckpt"
    result = convert(str(folder / "open_clip_pytorch_model.bin"), str(ckpt), str(folder / "model.json"))
    assert result.config.activation == activation
    pixels, tokens = inputs(cfg)
    return request.param, cfg, str(ckpt), (pixels, tokens) + ref.embeddings(model, pixels, tokens)


def test_embeddings_equal_open_clip_from_the_checkpoint_alone(converted):
    case, cfg, ckpt, (pixels, tokens, image, text) = converted
    model = clip.create_model(checkpoint=ckpt)  # no name: the checkpoint says what it is
    assert model.config == from_open_clip(cfg, case)
    close(model.encode_image(ms.Tensor(pixels)).asnumpy(), image, f"{case} image")
    close(model.encode_text(ms.Tensor(tokens)).asnumpy(), text, f"{case} text")


def test_pipeline_and_from_pretrained_build_the_same_model(converted):
    case, cfg, ckpt, (pixels, tokens, image, text) = converted
    for model in (clip.pipeline(model=ckpt, candidate_labels=["cat", "dog"]).model,
                  clip.CLIPModel.from_pretrained(ckpt)):
        assert model.config == from_open_clip(cfg, case)
        close(model.encode_image(ms.Tensor(pixels)).asnumpy(), image, f"{case} image")


def test_evaluation_builds_the_checkpoints_model(converted, tmp_path):
    """clip.eval with only model.checkpoint set evaluates the checkpoint's architecture: the same result as
    naming its JSON config, and a name that disagrees is refused naming the field."""
    case, cfg, ckpt, _ = converted
    if case != "ViT-B-32-256":
        pytest.skip("one architecture is enough for the evaluation path")
    from clip.api.app import evaluate
    from clip.config import load_config
    from clip.data import build_eval_source

    config_path = str(tmp_path / "model.json")
    with open(config_path, "w") as f:
        json.dump(cfg, f)
    run = load_config(None, [f"model.checkpoint={ckpt}", "data.eval.num_samples=8", "train.eval_batch_size=8",
                             f"output_dir={tmp_path}"])
    assert run.model.name is None
    source = build_eval_source(run.data.eval)
    by_checkpoint = evaluate(run, "zeroshot", run.data.eval, source, None, False)
    named = load_config(None, [f"model.name={config_path}", f"model.checkpoint={ckpt}", "data.eval.num_samples=8",
                               "train.eval_batch_size=8", f"output_dir={tmp_path}"])
    by_name = evaluate(named, "zeroshot", named.data.eval, source, None, False)
    assert by_checkpoint["top1"] == by_name["top1"] and by_checkpoint["n"] == 8
    wrong = load_config(None, ["model.name=clip_vit_b_32", f"model.checkpoint={ckpt}", "data.eval.num_samples=8",
                               f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="holds custom \\(image_size|holds custom \\(vision_layers 2\\), not "
                                        "clip_vit_b_32 \\(vision_layers 12\\)"):
        evaluate(wrong, "zeroshot", wrong.data.eval, source, None, False)


# ---------------------------------------------------------------- names, JSON configs and their errors

def test_every_open_clip_vit_config_is_listed_exactly_and_the_rest_refused():
    """The shipped data equals open_clip's files; every other config of open_clip 3.3.0 is refused by the
    same parser, naming the knob it would need."""
    import glob

    folder = os.path.join(os.path.dirname(ref.import_open_clip().__file__), "model_configs")
    shipped = json.loads((clip.model.architectures.resources.files("clip") / "assets/open_clip_models.json")
                         .read_text())["models"]
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        name = os.path.basename(path)[:-5]
        with open(path) as f:
            data = json.load(f)
        if name in shipped:
            assert shipped[name] == data and PRESETS[name] == from_open_clip(data, name)
        else:
            with pytest.raises(UserError, match="supported|unknown key"):
                from_open_clip(data, name)
    for name in ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14",
                 "ViT-bigG-14", "ViT-B-32-256", "ViT-B-16-plus-240", "ViT-g-14", "clip_vit_b_32", "clip_tiny"):
        assert name in list_models()
    assert clip.list_models() == clip.CLIPModel.show_support_list()


def test_big_models_have_open_clips_heads_and_mlp():
    """Head counts are not in the shapes: ViT-H/14 is 16 heads of 80, not 20 of 64; bigG's MLP is 8192."""
    for name, expected in (("ViT-H-14", (16, 5120, 16, "gelu")), ("ViT-bigG-14", (16, 8192, 20, "gelu"))):
        config = PRESETS[name]
        assert (config.vision_heads, config.mlp_width("vision"), config.text_heads, config.activation) == expected


@pytest.mark.parametrize("name, message", [
    ("vit-b-32", "unknown model 'vit-b-32'; expected one of clip_vit_b_32, .* \\(closest: ViT-B-32,"),
    ("ViT-H-14-CLIPA", "unknown model 'ViT-H-14-CLIPA'; .*closest: ViT-H-14"),
])
def test_unknown_name_suggests_the_closest(name, message):
    with pytest.raises(UserError, match=message):
        clip.create_model(name)


@pytest.mark.parametrize("change, message", [
    ({"vision_cfg": {"widht": 768}}, "unknown key vision_cfg.'widht' \\(did you mean 'width'\\?\\)"),
    ({"frobnicate": 1}, "unknown key 'frobnicate'"),
    ({"vision_cfg": {"no_ln_pre": True}}, "vision_cfg.no_ln_pre = true is not supported here \\(only false"),
    ({"vision_cfg": {"attentional_pool": True}}, "vision_cfg.attentional_pool = true is not supported"),
    ({"text_cfg": {"hf_tokenizer_name": "bert-base-uncased"}}, "text_cfg.hf_tokenizer_name = \"bert-base-uncased\""),
    ({"vision_cfg": {"act_kwargs": {"approximate": "tanh"}}}, "the towers' activations differ"),
    ({"vision_cfg": {"head_width": 100}}, "vision_cfg.width 768 is not a multiple of head_width 100"),
])
def test_json_config_errors_name_the_key(tmp_path, change, message, capsys):
    cfg = ref.model_cfg("ViT-B-32")
    for key, value in change.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message):
        get_config(str(path))
    with pytest.raises(SystemExit) as exc:  # and the command: one line, exit 2, nothing written
        main([str(path), str(tmp_path / "out.ckpt"), "--model", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and str(path) in err
    assert sorted(os.listdir(tmp_path)) == ["bad.json"]


def test_gelu_state_dict_is_ambiguous_and_a_wrong_model_names_the_parameter():
    """ViT-B-32 shapes (zero-stride arrays) without --model: refused naming every model with these shapes;
    --model ViT-H-14 names the first parameter whose shape differs."""
    tensors = {name: np.broadcast_to(np.float32(0), shape) for name, shape in expected_shapes(PRESETS["ViT-B-32"]).items()}
    with pytest.raises(UserError) as exc:
        to_openai_parameters(tensors, "b32.pt", None)
    assert str(exc.value) == ("b32.pt: a plain state dict does not say its activation or head count; pass --model with "
                              "one of the models whose shapes match: clip_vit_b_32 (quick_gelu), ViT-B-32 (gelu), "
                              "ViT-B-32-quickgelu (quick_gelu)")
    with pytest.raises(UserError, match="b32.pt: tensor visual.class_embedding has shape \\(768,\\), ViT-H-14 expects "
                                        "\\(1280,\\)"):
        to_openai_parameters(tensors, "b32.pt", "ViT-H-14")
    assert to_openai_parameters(tensors, "b32.pt", "ViT-B-32").config.activation == "gelu"


def test_open_clip_config_beside_the_weights_says_the_architecture(tmp_path):
    cfg = tiny(vision_cfg={"act_kwargs": {"approximate": "tanh"}}, text_cfg={"act_kwargs": {"approximate": "tanh"}})
    torch.save(ref.state_dict(ref.create(cfg)), tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    result = convert(str(tmp_path / "open_clip_pytorch_model.bin"), str(tmp_path / "out.ckpt"))
    assert result.architecture_from.endswith("open_clip_config.json") and result.config.activation == "gelu_tanh"
    assert clip.create_model(checkpoint=str(tmp_path / "out.ckpt")).config.activation == "gelu_tanh"


def test_old_checkpoints_without_an_architecture_still_load(tmp_path):
    """Written before checkpoints carried an architecture: OpenAI's QuickGELU inferred from the shapes."""
    model = clip.create_model("clip_tiny")
    ms.save_checkpoint(model, str(tmp_path / "old.ckpt"))
    assert "architecture" not in ms.load_checkpoint(str(tmp_path / "old.ckpt"))
    again = clip.create_model(checkpoint=str(tmp_path / "old.ckpt"))
    assert again.config == PRESETS["clip_tiny"]
    assert clip.create_model("clip_tiny", checkpoint=str(tmp_path / "old.ckpt")).config == PRESETS["clip_tiny"]


# ---------------------------------------------------------------- position embeddings at another resolution

@pytest.mark.parametrize("new_size", [40, 24, 64])
def test_position_embeddings_resized_as_open_clip_does(tmp_path, new_size):
    open_clip = ref.import_open_clip()
    cfg = tiny()
    source = ref.create(cfg)
    torch.save(ref.state_dict(source), tmp_path / "w.bin")
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    convert(str(tmp_path / "w.bin"), str(tmp_path / "m.ckpt"), str(tmp_path / "m.json"))
    ours = clip.create_model(checkpoint=str(tmp_path / "m.ckpt"), image_size=new_size)
    target = ref.create(tiny(vision_cfg={"image_size": new_size}), seed=5)
    state = ref.state_dict(source)
    open_clip.model.resize_pos_embed(state, target)
    target.load_state_dict(state)
    theirs = state["visual.positional_embedding"].numpy()
    mine = ours.visual.positional_embedding.asnumpy()
    assert mine.shape == theirs.shape == ((new_size // 8) ** 2 + 1, 160)
    np.testing.assert_allclose(mine, theirs, atol=1e-5 * np.abs(theirs).max())
    pixels, tokens = inputs(tiny(vision_cfg={"image_size": new_size}))
    image, _ = ref.embeddings(target, pixels, tokens)
    close(ours.encode_image(ms.Tensor(pixels)).asnumpy(), image, "resized image")


@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-bigG-14"])
def test_big_models_convert_and_encode_at_reduced_depth(name, tmp_path):
    """Full widths, heads and MLP of ViT-H/14 and ViT-bigG/14, 1 block per tower (full depth only repeats it
    and would not fit beside open_clip's copy in this machine's memory budget)."""
    cfg = copy.deepcopy(ref.model_cfg(name))
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 1
    model = ref.create(cfg)
    torch.save(ref.state_dict(model), tmp_path / "w.bin")
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    convert(str(tmp_path / "w.bin"), str(tmp_path / "m.ckpt"), str(tmp_path / "m.json"))
    del model
    ours = clip.create_model(checkpoint=str(tmp_path / "m.ckpt"))
    assert (ours.config.vision_heads, ours.config.mlp_width("vision")) == \
        (PRESETS[name].vision_heads, PRESETS[name].mlp_width("vision"))
    pixels, tokens = inputs(cfg, n=1)
    image, text = ref.embeddings(ref.create(cfg), pixels, tokens)  # same seed, same weights
    close(ours.encode_image(ms.Tensor(pixels)).asnumpy(), image, f"{name} image")
    close(ours.encode_text(ms.Tensor(tokens)).asnumpy(), text, f"{name} text")
