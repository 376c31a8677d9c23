"""Device profiles (clip.profiles): which profile each device target and CLIP_PROFILE value select, and the
stock pieces themselves. That the stock profile (what Ascend and GPU run) trains like the native one (CPU's)
(the plain step on 1 rank, accumulation on 2) is checked on the equivalence runs (tests/test_equivalence.py),
whose native runs also give the noise floor."""
import mindspore as ms
import numpy as np
import pytest

from clip import profiles
from launcher.errors import UserError


# ---------------------------------------------------------------- selection (pure)

@pytest.mark.parametrize("asked, target, expected", [
    (None, "CPU", "native"), ("auto", "CPU", "native"), (" Native ", "CPU", "native"), ("stock", "CPU", "stock"),
    (None, "Ascend", "stock"), ("auto", "Ascend", "stock"), ("stock", "Ascend", "stock"),
    (None, "GPU", "stock"), ("STOCK", "GPU", "stock"), ("", "CPU", "native")])
def test_auto_is_native_on_cpu_and_stock_on_ascend_and_gpu(asked, target, expected):
    env = {} if asked is None else {"CLIP_PROFILE": asked}
    assert profiles.choose(env, target).name == expected


def test_the_native_transport_is_shared_memory_unless_switched_off():
    assert profiles.choose({}, "CPU") == profiles.Profile("native", "shm")
    assert profiles.choose({"CLIP_SHM_COLLECTIVES": "off"}, "CPU") == profiles.Profile("native", "mindspore")
    assert profiles.choose({"CLIP_PROFILE": "stock"}, "CPU") == profiles.STOCK
    assert profiles.choose({}, "Ascend").transport == "mindspore"


@pytest.mark.parametrize("env, target, words", [
    ({"CLIP_PROFILE": "fast"}, "CPU", ["CLIP_PROFILE='fast'", "auto, native, stock"]),
    ({"CLIP_PROFILE": "cpu"}, "Ascend", ["CLIP_PROFILE='cpu'", "auto, native, stock"]),
    ({"CLIP_PROFILE": "native"}, "Ascend", ["CLIP_PROFILE=native", "CPU only", "Ascend"]),
    ({"CLIP_PROFILE": "native"}, "GPU", ["CLIP_PROFILE=native", "GPU"])])
def test_a_bad_choice_is_a_one_line_user_error(env, target, words):
    with pytest.raises(UserError) as err:
        profiles.choose(env, target)
    message = str(err.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_the_stock_profile_builds_mindspores_pieces(monkeypatch):
    monkeypatch.setenv("CLIP_PROFILE", "stock")
    assert profiles.active() == profiles.STOCK
    assert isinstance(profiles.layer_norm(1e-5), profiles.StockLayerNorm)
    assert isinstance(profiles.quick_gelu(), profiles.StockQuickGELU)
    assert isinstance(profiles.bias_add(), profiles.StockBiasAdd)
    assert isinstance(profiles.grad_norm(of_parameters=True), profiles.StockGradNorm)
    assert profiles.collectives(0, 2, "CPU", None) is None  # MindSpore's collectives, and no collective call
    assert profiles.cache_fields() == {"profile": "stock", "transport": "mindspore", "kernels": "off"}
    monkeypatch.setenv("CLIP_PROFILE", "native")
    fields = profiles.cache_fields()
    assert fields["profile"] == "native" and fields["kernels"].endswith(".so")
    assert not any(isinstance(piece, (profiles.StockLayerNorm, profiles.StockBiasAdd, profiles.StockGradNorm))
                   for piece in (profiles.layer_norm(1e-5), profiles.bias_add(), profiles.grad_norm()))


@pytest.mark.parametrize("of_parameters", [False, True])
def test_both_gradient_norms_are_the_float64_norm(of_parameters):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(shape).astype(np.float32) for shape in ((300, 40), (40,), (7, 3, 5), (1,))]
    exact = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    tensors = tuple(ms.Tensor(g) for g in grads)
    for name in ("native", "stock"):
        norm = profiles.grad_norm(of_parameters, profiles.Profile(name, "mindspore"))
        assert abs(float(norm(tensors).asnumpy()) - exact) <= 1e-6 * exact, name


# ---------------------------------------------------------------- training: stock against native
