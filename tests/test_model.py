"""The model's structure: OpenAI's parameter names and shapes, presets, shape inference, loading errors."""
import os

import mindspore as ms
import numpy as np
import pytest

import clip
from clip.model import CLIPModel, create_model
from clip.model.architectures import PRESETS, CLIPConfig, get_config, infer_config
from launcher.errors import UserError


def openai_keys(vision_layers, text_layers):
    """The state-dict keys of OpenAI's ViT CLIP (model.py of openai/CLIP), written out independently."""
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    keys = {"visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight",
            "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias",
            "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
            "text_projection", "logit_scale"}
    keys |= {f"visual.transformer.resblocks.{i}.{b}" for i in range(vision_layers) for b in block}
    keys |= {f"transformer.resblocks.{i}.{b}" for i in range(text_layers) for b in block}
    return keys


@pytest.fixture(scope="module")
def tiny():
    ms.set_seed(0)
    return create_model("clip_tiny")


def test_parameter_names_are_openai_state_dict_keys(tiny):
    names = {p.name for p in tiny.get_parameters()}
    assert names == openai_keys(2, 2)


def test_parameter_shapes_follow_pytorch_layout(tiny):
    shapes = {p.name: tuple(p.shape) for p in tiny.get_parameters()}
    cfg = tiny.config
    assert shapes["visual.conv1.weight"] == (cfg.vision_width, 3, cfg.patch_size, cfg.patch_size)
    assert shapes["visual.positional_embedding"] == (cfg.grid_size ** 2 + 1, cfg.vision_width)
    assert shapes["transformer.resblocks.0.attn.in_proj_weight"] == (3 * cfg.text_width, cfg.text_width)
    assert shapes["transformer.resblocks.1.mlp.c_fc.weight"] == (4 * cfg.text_width, cfg.text_width)
    assert shapes["text_projection"] == (cfg.text_width, cfg.embed_dim)
    assert shapes["logit_scale"] == ()
    assert float(tiny.logit_scale.asnumpy()) == pytest.approx(np.log(1 / 0.07), rel=1e-6)


def test_presets_have_the_published_shapes():
    assert CLIPModel.show_support_list() == list(PRESETS)
    b32, l14_336 = get_config("clip_vit_b_32"), get_config("clip_vit_l_14@336")
    assert (b32.vision_width, b32.vision_layers, b32.patch_size, b32.embed_dim, b32.text_width) == (768, 12, 32, 512, 512)
    assert (l14_336.image_size, l14_336.patch_size, l14_336.grid_size, l14_336.vision_heads) == (336, 14, 24, 16)
    assert CLIPConfig.from_pretrained("clip_vit_b_16").patch_size == 16


def test_infer_config_recovers_the_preset_from_shapes(tiny):
    shapes = {p.name: tuple(p.shape) for p in tiny.get_parameters()}
    assert infer_config(shapes) == get_config("clip_tiny")
    custom = CLIPConfig(embed_dim=32, image_size=48, patch_size=12, vision_width=64, vision_layers=3,
                        vision_heads=1, context_length=16, vocab_size=49408, text_width=64, text_layers=1,
                        text_heads=1)
    ms.set_seed(0)
    found = infer_config({p.name: tuple(p.shape) for p in CLIPModel(custom).get_parameters()})
    assert found == custom


def test_model_outputs(tiny):
    rng = np.random.default_rng(0)
    pixels = ms.Tensor(rng.standard_normal((3, 3, 64, 64)).astype(np.float32))
    tokens = clip.tokenize(["a red circle", "a blue square", ""], context_length=32)
    image, text, scale = tiny(pixels, ms.Tensor(tokens))
    assert image.shape == (3, 64) and text.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(image.asnumpy(), axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text.asnumpy(), axis=-1), 1.0, rtol=1e-5)
    assert float(scale.asnumpy()) == pytest.approx(1 / 0.07, rel=1e-5)
    # Text pooling happens at the end token: changing padding after it leaves the embedding unchanged.
    padded = tokens.copy()
    padded[0, -1] = 123
    a = tiny.encode_text(ms.Tensor(tokens)).asnumpy()[0]
    b = tiny.encode_text(ms.Tensor(padded)).asnumpy()[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_checkpoint_round_trip_and_from_pretrained(tiny, tmp_path, monkeypatch):
    path = tmp_path / "tiny.ckpt"
    ms.save_checkpoint(tiny, str(path))
    loaded = CLIPModel.from_pretrained(str(path))
    assert loaded.config == tiny.config
    for a, b in zip(tiny.get_parameters(), loaded.get_parameters()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    monkeypatch.setenv("CLIP_MODEL_DIR", str(tmp_path))
    os.replace(path, tmp_path / "clip_tiny.ckpt")
    assert CLIPModel.from_pretrained("clip_tiny").config == tiny.config


def test_missing_converted_weights_name_the_file_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_MODEL_DIR", str(tmp_path))
    with pytest.raises(UserError) as err:
        CLIPModel.from_pretrained("clip_vit_b_32")
    message = str(err.value)
    assert str(tmp_path / "clip_vit_b_32.ckpt") in message
    assert "python -m clip.convert ViT-B-32.pt" in message


def test_loading_errors_name_the_problem(tiny, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        create_model("clip_tiny", checkpoint=str(tmp_path / "nope.ckpt"))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="garbage.ckpt"):
        create_model("clip_tiny", checkpoint=str(garbage))
    ms.set_seed(0)
    other = CLIPModel(CLIPConfig(embed_dim=32, image_size=64, patch_size=16, vision_width=128, vision_layers=2,
                                 vision_heads=4, context_length=32, vocab_size=49408, text_width=64,
                                 text_layers=2, text_heads=2))
    wrong = tmp_path / "wrong.ckpt"
    ms.save_checkpoint(other, str(wrong))
    with pytest.raises(UserError, match="has shape"):
        create_model("clip_tiny", checkpoint=str(wrong))
    with pytest.raises(UserError, match="unknown model"):
        create_model("clip_vit_h_14")
    with pytest.raises(UserError, match="dtype"):
        create_model("clip_tiny", dtype="float64")
