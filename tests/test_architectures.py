"""open_clip's architectures: embeddings equal open_clip's own models (random weights, built by open_clip 3.3.0)
for each knob (exact and tanh GELU, QuickGELU, head width 80 with MLP ratio 4.9231, 256 px, LayerNorm eps),
through convert -> a checkpoint that carries its architecture -> create_model / pipeline / predict / evaluation
with no name; a Hugging Face config.json beside the weights; the names and JSON configs, their one-line errors,
and position embeddings resized as open_clip does (create_model and model.image_size in a config).

Sizes: each knob keeps its real value (head width 80 and 64, MLP ratio 4.9231, 256 px on 32 px patches...) on
narrow towers of 2 blocks (the knobs act per block and per head; width and depth only repeat them); ViT-H/14 and
ViT-bigG/14 keep their full widths, heads and MLPs at 1 block per tower. Each case is built, converted and run
by open_clip once per module (the `case` fixture), so the whole file stays a few tens of seconds."""
import copy
import json
import os

import mindspore as ms
import numpy as np
import pytest
import torch

import clip
import openclip_reference as ref
from clip.model.architectures import (PRESETS, expected_shapes, from_open_clip, get_config, list_models,
                                     mlp_ratio_for)
from clip.model.convert import convert, main, to_openai_parameters
from launcher.errors import UserError

from crafted_weights import hf_names


def narrow(name, **vision):
    """open_clip's config `name` with its knobs (patch and image size, head width 64, context 77, activation)
    on towers 128 wide (2 heads of 64) and 2 blocks deep."""
    cfg = copy.deepcopy(ref.model_cfg(name))
    cfg["embed_dim"] = 64
    cfg["vision_cfg"].update({"layers": 2, "width": 128}, **vision)
    cfg["text_cfg"].update({"layers": 2, "width": 128, "heads": 2})
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


HEAD_80 = "head_width 80, mlp_ratio 4.9231"
CASES = {
    "ViT-B-32 (gelu)": (lambda: narrow("ViT-B-32"), "gelu"),
    "ViT-B-32-256": (lambda: narrow("ViT-B-32-256"), "gelu"),
    HEAD_80: (lambda: tiny(), "gelu"),
    "quick_gelu": (lambda: tiny(quick_gelu=True), "quick_gelu"),
    "gelu_tanh": (lambda: tiny(vision_cfg={"act_kwargs": {"approximate": "tanh"}},
                               text_cfg={"act_kwargs": {"approximate": "tanh"}}), "gelu_tanh"),
    # SigLIP's knobs on open_clip's own towers: no ln_pre; text both ways, pooled last, biased projection, tanh
    "no ln_pre, text as SigLIP's": (lambda: tiny(vision_cfg={"no_ln_pre": True}, text_cfg={
        "no_causal_mask": True, "pool_type": "last", "proj_bias": True, "act_kwargs": {"approximate": "tanh"}}),
        "gelu"),
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


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """case name -> its build, once per module: {"cfg": open_clip config, "model": open_clip's model,
    "folder", "weights": its state dict saved as open_clip does, "ckpt": converted with --model <json>,
    "pixels", "tokens", "image", "text": open_clip's embeddings}."""
    built = {}

    def get(name):
        if name not in built:
            build, activation = CASES[name]
            cfg = build()
            folder = tmp_path_factory.mktemp("arch")
            model = ref.create(cfg)
            torch.save(ref.state_dict(model), folder / "open_clip_pytorch_model.bin")
            (folder / "model.json").write_text(json.dumps(cfg))
            ckpt = folder / "model.ckpt"
            result = convert(str(folder / "open_clip_pytorch_model.bin"), str(ckpt), str(folder / "model.json"))
            assert result.config.activation == activation
            pixels, tokens = inputs(cfg)
            image, text = ref.embeddings(model, pixels, tokens)
            built[name] = {"cfg": cfg, "model": model, "folder": folder, "weights": folder / "open_clip_pytorch_model.bin",
                           "ckpt": str(ckpt), "pixels": pixels, "tokens": tokens, "image": image, "text": text}
        return built[name]
    return get


@pytest.fixture(params=list(CASES))
def converted(request, case):
    return request.param, case(request.param)


def test_embeddings_equal_open_clip_from_the_checkpoint_alone(converted):
    name, c = converted
    model = clip.create_model(checkpoint=c["ckpt"])  # no name: the checkpoint says what it is
    assert model.config == from_open_clip(c["cfg"], name)
    close(model.encode_image(ms.Tensor(c["pixels"])).asnumpy(), c["image"], f"{name} image")
    close(model.encode_text(ms.Tensor(c["tokens"])).asnumpy(), c["text"], f"{name} text")


def test_pipeline_and_from_pretrained_build_the_same_model(converted):
    name, c = converted
    for model in (clip.pipeline(model=c["ckpt"], candidate_labels=["cat", "dog"]).model,
                  clip.CLIPModel.from_pretrained(c["ckpt"])):
        assert model.config == from_open_clip(c["cfg"], name)
        close(model.encode_image(ms.Tensor(c["pixels"])).asnumpy(), c["image"], f"{name} image")


def open_clip_probabilities(model, pixels, labels, context_length, template="a photo of a {}."):
    """The pipeline's designed output computed by open_clip: softmax over labels of exp(logit_scale) * cosine."""
    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(pixels), normalize=True).double()
        tokens = clip.tokenize([template.format(label) for label in labels], context_length=context_length)
        text = model.encode_text(torch.from_numpy(np.asarray(tokens, np.int64)), normalize=True).double()
        return torch.softmax(model.logit_scale.exp().double() * image @ text.T, dim=-1).numpy()


def test_predict_command_with_a_json_model_config_equals_open_clip(case, tmp_path, capsys):
    """`clip.predict --model <open_clip JSON> --checkpoint` (and with the checkpoint alone): open_clip's
    probabilities for the 256 px model; a JSON that disagrees with the checkpoint is refused in one line."""
    from PIL import Image

    from clip.eval.predict import main as predict
    from clip.model.transforms import image_transform

    c = case("ViT-B-32-256")
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    labels = ["cat", "dog", "snow"]
    pixels = image_transform(256)(image)[None].astype(np.float32)
    expected = dict(zip(labels, open_clip_probabilities(c["model"], pixels, labels, 77)[0]))
    outputs = []
    for model in ([], ["--model", str(c["folder"] / "model.json")]):
        assert predict(["--checkpoint", c["ckpt"], *model, "--image", str(tmp_path / "x.png"), "--labels",
                        ",".join(labels), "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        outputs.append(row["predictions"])
        assert {p["label"]: pytest.approx(expected[p["label"]], abs=1e-5) for p in row["predictions"]} == expected
    assert outputs[0] == outputs[1]
    other = dict(c["cfg"], quick_gelu=True)
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit) as exc:
        predict(["--checkpoint", c["ckpt"], "--model", str(tmp_path / "other.json"), "--image",
                 str(tmp_path / "x.png"), "--labels", "cat,dog"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "activation 'gelu'" in err and "'quick_gelu'" in err


def test_evaluation_builds_the_checkpoints_model(case, tmp_path):
    """clip.eval with only model.checkpoint set evaluates the checkpoint's architecture: the same result as
    naming its JSON config, and a name that disagrees is refused naming the field."""
    from clip.api.app import evaluate
    from clip.config import load_config
    from clip.data import build_eval_source

    c = case("ViT-B-32-256")
    ckpt, config_path = c["ckpt"], str(c["folder"] / "model.json")
    run = load_config(None, [f"model.checkpoint={ckpt}", "data.eval.num_samples=8", "train.eval_batch_size=8",
                             f"output_dir={tmp_path}"])
    assert run.model.name is None
    source = build_eval_source(run.data.eval)
    by_checkpoint = evaluate(run, "zeroshot", run.data.eval, source, None, False)
    named = load_config(None, [f"model.name={config_path}", f"model.checkpoint={ckpt}", "data.eval.num_samples=8",
                               "train.eval_batch_size=8", f"output_dir={tmp_path}"])
    by_name = evaluate(named, "zeroshot", named.data.eval, source, None, False)
    assert by_checkpoint["top1"] == by_name["top1"] and by_checkpoint["n"] == 8
    assert by_checkpoint["per_class"] == by_name["per_class"]
    wrong = load_config(None, ["model.name=clip_vit_b_32", f"model.checkpoint={ckpt}", "data.eval.num_samples=8",
                               f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="holds custom \\(embed_dim 64\\), not clip_vit_b_32 \\(embed_dim 512\\)"):
        evaluate(wrong, "zeroshot", wrong.data.eval, source, None, False)


def test_hugging_face_config_beside_the_weights_says_the_architecture(case, tmp_path):
    """A Hugging Face CLIPModel safetensors with its config.json (hidden_act gelu, 2 heads of 80, MLP 787):
    converted without --model, it builds open_clip's model (heads and MLP from the config, not width / 64)."""
    from safetensors.numpy import save_file

    c = case(HEAD_80)
    config = from_open_clip(c["cfg"], HEAD_80)
    state = {k: v.numpy() for k, v in ref.state_dict(c["model"]).items() if k in expected_shapes(config)}
    save_file({k: np.asarray(v, order="C") for k, v in hf_names(state, config).items()},
              str(tmp_path / "model.safetensors"))
    vision, text = c["cfg"]["vision_cfg"], c["cfg"]["text_cfg"]
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["CLIPModel"], "projection_dim": c["cfg"]["embed_dim"],
        "vision_config": {"hidden_act": "gelu", "hidden_size": 160, "image_size": 32, "patch_size": 8,
                          "intermediate_size": int(160 * vision["mlp_ratio"]), "num_attention_heads": 2,
                          "num_hidden_layers": 2, "layer_norm_eps": 1e-5},
        "text_config": {"hidden_act": "gelu", "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
                        "num_hidden_layers": 2, "max_position_embeddings": text["context_length"],
                        "vocab_size": 49408, "layer_norm_eps": 1e-5}}))
    result = convert(str(tmp_path / "model.safetensors"), str(tmp_path / "out.ckpt"))
    assert result.architecture_from == str(tmp_path / "config.json")
    model = clip.create_model(checkpoint=str(tmp_path / "out.ckpt"))
    assert (model.config.activation, model.config.vision_heads, model.config.mlp_width("vision")) == ("gelu", 2, 787)
    close(model.encode_image(ms.Tensor(c["pixels"])).asnumpy(), c["image"], "HF image")
    close(model.encode_text(ms.Tensor(c["tokens"])).asnumpy(), c["text"], "HF text")


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


def test_hugging_face_mlp_widths_give_open_clips_ratios():
    """A Hugging Face config states the MLP width, open_clip the ratio: every listed model's width maps back to
    the very ratio open_clip writes (bigG 8192 / 1664 -> 4.9231, g 6144 / 1408 -> 4.3637), so a converted
    checkpoint names the same architecture as open_clip's config."""
    for name, config in PRESETS.items():
        for tower in ("vision", "text"):
            width, ratio = getattr(config, f"{tower}_width"), getattr(config, f"{tower}_mlp_ratio")
            assert mlp_ratio_for(int(width * ratio), width) == ratio, (name, tower)
    assert int(160 * mlp_ratio_for(787, 160)) == 787  # a width no 4-decimal ratio gives is still exact


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
    ({"vision_cfg": {"pool_type": "avg"}}, "vision_cfg.pool_type = \"avg\" is not supported here \\(only \"tok\""),
    ({"vision_cfg": {"attentional_pool": True}}, "vision_cfg.attentional_pool = true is not supported"),
    ({"text_cfg": {"tokenizer_kwargs": {"strip_sep_token": True}}},
     "text_cfg.tokenizer_kwargs = {\"strip_sep_token\": true} is not supported here"),
    ({"vision_cfg": {"norm_kwargs": {"eps": 1e-6}}}, "the towers' LayerNorm eps differ"),
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


def test_open_clip_config_beside_the_weights_says_the_architecture(case, tmp_path):
    c = case("gelu_tanh")
    os.link(c["weights"], tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": c["cfg"], "preprocess_cfg": {}}))
    result = convert(str(tmp_path / "open_clip_pytorch_model.bin"), str(tmp_path / "out.ckpt"))
    assert result.architecture_from.endswith("open_clip_config.json") and result.config.activation == "gelu_tanh"
    model = clip.create_model(checkpoint=str(tmp_path / "out.ckpt"))
    assert model.config.activation == "gelu_tanh"
    close(model.encode_text(ms.Tensor(c["tokens"])).asnumpy(), c["text"], "gelu_tanh text")


def test_old_checkpoints_without_an_architecture_still_load(tmp_path):
    """Written before checkpoints carried an architecture: OpenAI's QuickGELU inferred from the shapes."""
    model = clip.create_model("clip_tiny")
    ms.save_checkpoint(model, str(tmp_path / "old.ckpt"))
    assert "architecture" not in ms.load_checkpoint(str(tmp_path / "old.ckpt"))
    again = clip.create_model(checkpoint=str(tmp_path / "old.ckpt"))
    assert again.config == PRESETS["clip_tiny"]
    assert clip.create_model("clip_tiny", checkpoint=str(tmp_path / "old.ckpt")).config == PRESETS["clip_tiny"]


# ---------------------------------------------------------------- position embeddings at another resolution

def open_clip_resized(case, new_size):
    """open_clip's model at `new_size` px holding the case's weights, position embeddings resized by open_clip's
    own resize_pos_embed (what open_clip does when it loads a checkpoint at another image size)."""
    state = ref.state_dict(case["model"])
    target = ref.create(tiny(vision_cfg={"image_size": new_size}), seed=5)
    ref.import_open_clip().model.resize_pos_embed(state, target)
    target.load_state_dict(state)
    return target


@pytest.mark.parametrize("new_size", [40, 24, 64])
def test_position_embeddings_resized_as_open_clip_does(case, new_size):
    c = case(HEAD_80)
    ours = clip.create_model(checkpoint=c["ckpt"], image_size=new_size)
    target = open_clip_resized(c, new_size)
    theirs = target.visual.positional_embedding.detach().numpy()
    mine = ours.visual.positional_embedding.asnumpy()
    assert mine.shape == theirs.shape == ((new_size // 8) ** 2 + 1, 160)
    np.testing.assert_allclose(mine, theirs, atol=1e-5 * np.abs(theirs).max())
    pixels, tokens = inputs(tiny(vision_cfg={"image_size": new_size}))
    image, _ = ref.embeddings(target, pixels, tokens)
    close(ours.encode_image(ms.Tensor(pixels)).asnumpy(), image, "resized image")


def test_model_image_size_in_a_config_resizes_the_checkpoints_position_embeddings(case, tmp_path):
    """model.image_size in a YAML config with model.checkpoint: prediction (the Trainer's, which reads the config)
    runs at 48 px with the position embeddings open_clip's resize_pos_embed gives; an image size that is not a
    multiple of the patch size is refused in one line."""
    from PIL import Image

    from clip.api.trainer import ZERO_SHOT, Trainer
    from clip.model.transforms import image_transform

    c = case(HEAD_80)
    (tmp_path / "run.yaml").write_text(f"model:\n  checkpoint: {c['ckpt']}\n  image_size: 48\n"
                                       f"output_dir: {tmp_path / 'out'}\n")
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (60, 50, 3), dtype=np.uint8))
    labels = ["cat", "dog", "snow", "night"]
    predictions = Trainer(ZERO_SHOT, config=str(tmp_path / "run.yaml")).predict(image, labels, top_k=None)
    target = open_clip_resized(c, 48)
    expected = open_clip_probabilities(target, image_transform(48)(image)[None].astype(np.float32), labels, 16)[0]
    assert [p["label"] for p in predictions] == [labels[i] for i in np.argsort(-expected, kind="stable")]
    np.testing.assert_allclose([p["score"] for p in predictions], np.sort(expected)[::-1], atol=1e-5)
    (tmp_path / "bad.yaml").write_text(f"model:\n  checkpoint: {c['ckpt']}\n  image_size: 44\n")
    with pytest.raises(UserError, match="^image_size 44 is not a multiple of patch_size 8$"):
        Trainer(ZERO_SHOT, config=str(tmp_path / "bad.yaml")).predict(image, labels)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-bigG-14"])
def test_big_models_convert_and_encode_at_reduced_depth(name, tmp_path):
    """Full widths, heads and MLP of ViT-H/14 and ViT-bigG/14, 1 block per tower (full depth only repeats it
    and would not fit beside open_clip's copy in this machine's memory budget)."""
    cfg = copy.deepcopy(ref.model_cfg(name))
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 1
    model = ref.create(cfg)
    torch.save(model.state_dict(), tmp_path / "w.bin")
    pixels, tokens = inputs(cfg, n=1)
    image, text = ref.embeddings(model, pixels, tokens)
    del model
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    convert(str(tmp_path / "w.bin"), str(tmp_path / "m.ckpt"), str(tmp_path / "m.json"))
    os.remove(tmp_path / "w.bin")
    ours = clip.create_model(checkpoint=str(tmp_path / "m.ckpt"))
    assert (ours.config.vision_heads, ours.config.mlp_width("vision"), ours.config.text_heads) == \
        (PRESETS[name].vision_heads, PRESETS[name].mlp_width("vision"), PRESETS[name].text_heads)
    close(ours.encode_image(ms.Tensor(pixels)).asnumpy(), image, f"{name} image")
    close(ours.encode_text(ms.Tensor(tokens)).asnumpy(), text, f"{name} text")
