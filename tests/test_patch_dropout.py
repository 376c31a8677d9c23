"""Patch dropout (model.patch_dropout): open_clip's token count, placement and gradients, a draw that depends on the
global sample position only (N cards == 1 card, resume exact), and no dropout in evaluation."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from clip.model import patch_dropout as pd

from training_runs import TINY, TOL, finish_training, losses, max_param_diff, model_params, run_training, start_training


@pytest.mark.parametrize("num_patches,prob", [(16, 0.5), (49, 0.5), (196, 0.75), (196, 0.5), (3, 0.9), (7, 0.0)])
def test_keeps_open_clips_number_of_patches(num_patches, prob):
    import torch

    from openclip_reference import import_open_clip

    PatchDropout = import_open_clip().transformer.PatchDropout
    reference = PatchDropout(prob) if prob > 0 else None
    tokens = torch.zeros(2, num_patches + 1, 4)
    expected = reference.train()(tokens).shape[1] - 1 if reference else num_patches
    keep = pd.keep_indices(3, 11, np.arange(5), num_patches, prob)
    assert keep.shape == (5, expected) == (5, pd.keep_count(num_patches, prob)) and keep.dtype == np.int32
    for row in keep:  # distinct patches of this image, in order
        assert np.all(np.diff(row) > 0) and 0 <= row[0] and row[-1] < num_patches


def test_the_draw_depends_on_seed_step_and_global_position_only():
    one_card = pd.keep_indices(7, 5, pd.rank_positions(0, 8), 196, 0.5)
    ranks = [pd.keep_indices(7, 5, pd.rank_positions(r, 2), 196, 0.5) for r in range(4)]
    assert np.array_equal(np.concatenate(ranks), one_card)  # 4 ranks x 2 == 1 rank x 8
    assert np.array_equal(pd.keep_indices(7, 5, [3], 196, 0.5)[0], one_card[3])
    others = [pd.keep_indices(8, 5, np.arange(8), 196, 0.5), pd.keep_indices(7, 6, np.arange(8), 196, 0.5)]
    for other in others + [one_card[1:]]:
        assert not np.array_equal(other[:7], one_card[:7])
    # every patch is about as likely to be kept: 0.5 +- 4 standard deviations over 4096 images
    share = np.bincount(pd.keep_indices(1, 0, np.arange(4096), 196, 0.5).ravel(), minlength=196) / 4096
    assert np.all(np.abs(share - 0.5) < 4 * (0.25 / 4096) ** 0.5)


def test_the_tower_keeps_the_class_token_and_the_listed_patches_and_evaluation_keeps_all():
    import mindspore as ms

    from clip.model import create_model
    from clip.model.towers import drop_patches

    ms.set_seed(0)
    model = create_model("clip_tiny")
    n = model.config.grid_size ** 2
    x = np.random.default_rng(0).standard_normal((3, n + 1, 8)).astype(np.float32)
    keep = pd.keep_indices(0, 0, np.arange(3), n, 0.5)
    kept = drop_patches(ms.Tensor(x), ms.Tensor(keep)).asnumpy()
    assert kept.shape == (3, 1 + n // 2, 8) and np.array_equal(kept[:, 0], x[:, 0])
    assert np.array_equal(kept[:, 1:], np.stack([x[i, keep[i] + 1] for i in range(3)]))
    pixels = ms.Tensor(np.random.default_rng(1).random((3, 3, 64, 64), np.float32))
    full = model.encode_image(pixels).asnumpy()  # evaluation's call: no indices, every token
    every = np.tile(np.arange(n, dtype=np.int32), (3, 1))
    assert np.allclose(model.encode_image(pixels, ms.Tensor(every)).asnumpy(), full, atol=1e-6)
    assert not np.allclose(model.encode_image(pixels, ms.Tensor(keep)).asnumpy(), full, atol=1e-3)


@pytest.mark.parametrize("profile", ["native", "stock"])
def test_given_the_same_kept_patches_the_tower_trains_as_open_clips(profile, tmp_path, monkeypatch):
    """open_clip's VisionTransformer with its patch dropout handed our kept patches (its PatchDropout draws them
    with torch.randn; which patches is the only thing ours does differently) gives the same image embedding and
    the same gradient for every image-tower parameter, in CPU's native profile and in the stock one Ascend and GPU
    run: the tokens are dropped at open_clip's place (after the position embedding, before ln_pre, class token
    kept)."""
    import json

    import mindspore as ms
    import torch
    from mindspore import nn, ops

    import openclip_reference as ref
    from clip import profiles
    from clip.model import create_model
    from clip.model.convert import convert
    from training_runs import TINY_MODEL

    reference = ref.create(json.loads(TINY_MODEL.read_text()), seed=5)
    torch.save(ref.state_dict(reference), tmp_path / "open_clip.bin")
    convert(str(tmp_path / "open_clip.bin"), str(tmp_path / "tiny.ckpt"), model=str(TINY_MODEL))
    rng = np.random.default_rng(5)
    size = reference.visual.image_size[0]
    n = (size // reference.visual.patch_size[0]) ** 2
    pixels = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    weights = rng.standard_normal((3, reference.visual.output_dim)).astype(np.float32)
    keep = pd.keep_indices(7, 2, np.arange(3), n, 0.5)

    class GivenPatches(torch.nn.Module):
        """open_clip's PatchDropout with its random choice replaced by `keep`."""

        def forward(self, x):
            rows = torch.arange(x.shape[0])[:, None]
            return torch.cat([x[:, :1], x[rows, torch.from_numpy(keep).long() + 1]], dim=1)

    reference.visual.patch_dropout = GivenPatches()
    embedding = reference.visual(torch.from_numpy(pixels))
    (embedding * torch.from_numpy(weights)).sum().backward()
    expected = {f"visual.{name}": p.grad.numpy() for name, p in reference.visual.named_parameters()}

    monkeypatch.setenv("CLIP_PROFILE", profile)
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        assert profiles.cache_fields()["profile"] == profile
        model = create_model(checkpoint=str(tmp_path / "tiny.ckpt"))

        class Grads(nn.Cell):
            def __init__(self):
                super().__init__(auto_prefix=False)
                self.model = model
                self.weights = [p for p in model.trainable_params() if p.name.startswith("visual.")]
                self.grad = ops.GradOperation(get_by_list=True)

            def loss(self, x, kept, w):
                return (self.model.encode_image(x, kept) * w).sum()

            def construct(self, x, kept, w):
                return self.model.encode_image(x, kept), self.grad(self.loss, self.weights)(x, kept, w)

        grads = Grads()
        image, values = grads(ms.Tensor(pixels), ms.Tensor(keep), ms.Tensor(weights))
        got = {p.name: g.asnumpy() for p, g in zip(grads.weights, values)}
    finally:
        ms.set_context(mode=previous)
    np.testing.assert_allclose(image.asnumpy(), embedding.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert got.keys() == expected.keys() and len(got) > 10
    scale = max(float(np.abs(g).max()) for g in expected.values())
    worst = max((float(np.abs(got[k] - expected[k]).max()) / scale, k) for k in got)
    assert worst[0] <= 1e-5, f"gradient of {worst[1]} differs by {worst[0]:.3g} (relative to the largest gradient)"


@pytest.mark.processes
def test_n_cards_equal_one_card_and_resume_is_bit_identical(tmp_path):
    """One card straight (saving at step 2) beside two cards straight; then one card resumed from the step-2
    checkpoint in a fresh directory: the resumed half equals the straight one bit for bit.

    Two cards drawing other patches than one card would move the per-step loss by far more than float noise;
    measured here, it agrees within 2.4e-7 (as without patch dropout), and the parameters within float noise
    that AdamW's first steps amplify (up to 1.4e-5, on one text_projection entry)."""
    overrides = [o for o in TINY if not o.startswith("train.max_steps")] + [
        "train.max_steps=4", "train.batch_size=8", "train.save_every=2", "model.patch_dropout=0.5"]
    one = start_training(tmp_path / "one", overrides)
    with ThreadPoolExecutor(1) as pool:  # the cluster runs beside both one-card runs
        cluster = pool.submit(run_training, tmp_path / "two", 2,
                              [o.replace("batch_size=8", "batch_size=4") for o in overrides])
        finish_training(tmp_path / "one", one)
        half = str(tmp_path / "one" / "checkpoints" / "step_00000002.ckpt")
        resumed = finish_training(tmp_path / "resumed", start_training(
            tmp_path / "resumed", [o for o in overrides if o != "train.resume=none"] + [f"train.resume={half}"]))
        two = cluster.result()
    straight = model_params(tmp_path / "one" / "checkpoints" / "last.ckpt")
    one_card, two_cards = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert max_param_diff(model_params(tmp_path / "resumed" / "checkpoints" / "last.ckpt"), straight)[0] == 0.0
    assert losses(tmp_path / "resumed") == {s: one_card[s] for s in (3, 4)} and "steps 2->4 of 4" in resumed.stdout
    assert sorted(two_cards) == [1, 2, 3, 4] and max(abs(two_cards[s] - one_card[s]) for s in one_card) <= 1e-6
    diff, key = max_param_diff(model_params(tmp_path / "two" / "checkpoints" / "last.ckpt"), straight)
    assert diff <= 3 * TOL, f"{key} differs by {diff:.3g} between 2 cards and 1"
    assert "patch dropout 0.5: 8 of 16 patches per image" in two.stdout
