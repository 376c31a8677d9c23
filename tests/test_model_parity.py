"""Same weights, same embeddings: our MindSpore CLIP against the independent torch reference.

ViT-L/14@336 runs with its real widths, heads, patch size, resolution (24x24 patches + class token)
and context length, but 4 vision / 2 text layers instead of 24 / 12: the per-layer computation is what
is compared, and full depth would cost ~1 minute on 2 cores without testing anything new.
"""
from dataclasses import replace

import mindspore as ms
import numpy as np
import pytest
import torch

from clip.model import create_model
from clip.model.architectures import get_config
from clip.model.tokenizer import tokenize

import torch_reference

CAPTIONS = ["a photo of a cat.", "", "Two dogs playing in the snow near a red barn, 1998 " * 6]

CASES = {
    "clip_tiny": get_config("clip_tiny"),
    "clip_vit_b_32": get_config("clip_vit_b_32"),
    "clip_vit_l_14@336 (4+2 layers)": replace(get_config("clip_vit_l_14@336"), vision_layers=4, text_layers=2),
}


def load_into_ours(config, state):
    model = create_model(config)
    params = {p.name: p for p in model.get_parameters()}
    assert set(params) == set(state), "parameter names must equal OpenAI's state-dict keys"
    for name, value in state.items():
        params[name].set_data(ms.Tensor(value.numpy()))
    return model


def embeddings_of_both(config, batch, seed):
    state = torch_reference.random_state_dict(torch_reference.Shapes.of(config), seed=seed)
    reference = torch_reference.build(state, torch_reference.Shapes.of(config))
    ours = load_into_ours(config, state)
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch, 3, config.image_size, config.image_size)).astype(np.float32)
    tokens = tokenize((CAPTIONS * batch)[:batch], context_length=config.context_length)
    with torch.no_grad():
        ref_image = reference.encode_image(torch.from_numpy(pixels)).numpy()
        ref_text = reference.encode_text(torch.from_numpy(tokens).long()).numpy()
    our_image = ours.encode_image(ms.Tensor(pixels)).asnumpy()
    our_text = ours.encode_text(ms.Tensor(tokens)).asnumpy()
    return our_image, ref_image, our_text, ref_text


@pytest.mark.parametrize("name", [n if n == "clip_tiny" else pytest.param(n, marks=pytest.mark.slow) for n in CASES])
def test_embeddings_match_torch_reference(name):
    config = CASES[name]
    batch = 3 if name == "clip_tiny" else 2
    our_image, ref_image, our_text, ref_text = embeddings_of_both(config, batch, seed=len(name))
    assert our_image.dtype == np.float32 and our_image.shape == (batch, config.embed_dim)
    assert our_text.dtype == np.float32 and our_text.shape == (batch, config.embed_dim)
    # Embeddings are O(1) (the reference's weights keep activations at unit scale), so 1e-4 is tight.
    assert 0.3 < np.abs(ref_image).mean() < 3 and 0.3 < np.abs(ref_text).mean() < 3
    np.testing.assert_allclose(our_image, ref_image, rtol=0, atol=1e-4)
    np.testing.assert_allclose(our_text, ref_text, rtol=0, atol=1e-4)
    # Distinct inputs give distinct outputs, so agreement is not a constant coincidence.
    assert np.abs(ref_text[0] - ref_text[1]).max() > 1e-2


def test_full_forward_matches_reference_logits():
    """model(pixels, tokens) gives normalised features and exp(logit_scale) consistent with OpenAI's logits."""
    config = CASES["clip_tiny"]
    state = torch_reference.random_state_dict(torch_reference.Shapes.of(config), seed=5)
    reference = torch_reference.build(state, torch_reference.Shapes.of(config))
    ours = load_into_ours(config, state)
    pixels = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    tokens = tokenize(CAPTIONS[:2], context_length=config.context_length)
    image, text, scale = (t.asnumpy() for t in ours(ms.Tensor(pixels), ms.Tensor(tokens)))
    with torch.no_grad():
        ref_logits, _ = reference(torch.from_numpy(pixels), torch.from_numpy(tokens).long())
    np.testing.assert_allclose(np.linalg.norm(image, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(scale * image @ text.T, ref_logits.numpy(), rtol=1e-5, atol=1e-4)


def test_gradients_match_torch_reference():
    """Every parameter's gradient (compiled, as training runs) equals torch autograd's on the same weights and
    inputs: this covers the model's custom backward passes (the bias gradients of transformer.BiasAdd)."""
    from mindspore import nn, ops

    config = CASES["clip_tiny"]
    state = torch_reference.random_state_dict(torch_reference.Shapes.of(config), seed=11)
    reference = torch_reference.build(state, torch_reference.Shapes.of(config))
    ours = load_into_ours(config, state)
    rng = np.random.default_rng(11)
    pixels = rng.standard_normal((3, 3, config.image_size, config.image_size)).astype(np.float32)
    tokens = tokenize(CAPTIONS, context_length=config.context_length)
    w_image, w_text = (rng.standard_normal((3, config.embed_dim)).astype(np.float32) for _ in range(2))

    for p in reference.parameters():
        p.requires_grad_(True)
    loss = ((reference.encode_image(torch.from_numpy(pixels)) * torch.from_numpy(w_image)).sum()
            + (reference.encode_text(torch.from_numpy(tokens).long()) * torch.from_numpy(w_text)).sum())
    loss.backward()
    expected = {name: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape), np.float32))
                for name, p in reference.named_parameters()}

    class Grads(nn.Cell):
        def __init__(self, model):
            super().__init__(auto_prefix=False)  # keep the model's parameter names
            self.model, self.weights = model, model.trainable_params()
            self.grad = ops.GradOperation(get_by_list=True)

        def loss(self, x, t, wi, wt):
            return (self.model.encode_image(x) * wi).sum() + (self.model.encode_text(t) * wt).sum()

        def construct(self, x, t, wi, wt):
            return self.grad(self.loss, self.weights)(x, t, wi, wt)

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        grads = Grads(ours)
        values = grads(ms.Tensor(pixels), ms.Tensor(tokens), ms.Tensor(w_image), ms.Tensor(w_text))
        got = {p.name: g.asnumpy() for p, g in zip(grads.weights, values)}
    finally:
        ms.set_context(mode=previous)
    assert got.keys() == expected.keys()
    biases = [name for name in got if name.endswith("bias") and "ln_" not in name]
    assert len(biases) >= 8 and all(np.abs(expected[name]).max() > 1e-3 for name in biases)
    scale = max(float(np.abs(g).max()) for g in expected.values())
    worst = max((float(np.abs(got[k] - expected[k]).max()) / scale, k) for k in got)
    assert worst[0] <= 1e-5, f"gradient of {worst[1]} differs by {worst[0]:.3g} (relative to the largest gradient)"
