"""Device profiles (clip.profiles): which profile each device target and CLIP_PROFILE value select, and that the
stock profile (what Ascend and GPU run) trains like the native one (CPU's) on 1 and 2 ranks, with and
without accumulation, within the float noise floor measured in the same runs."""
import contextlib
import os

import mindspore as ms
import numpy as np
import pytest

from clip import profiles
from launcher.errors import UserError
from training_runs import TINY, finish_training, losses, max_param_diff, model_params, run_training, start_training


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

# (world size, per-rank batch, micro-batches): every one the same global batch of 8, so the same training
CASES = {"w1_k1": (1, 8, 1), "w1_k2": (1, 4, 2), "w2_k1": (2, 4, 1), "w2_k2": (2, 2, 2)}
FACTOR = 3  # how far above the measured noise floor the profiles may end


@contextlib.contextmanager
def profile_env(name: str):
    """CLIP_PROFILE for the processes started inside (they copy os.environ)."""
    before = os.environ.get("CLIP_PROFILE")
    os.environ["CLIP_PROFILE"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CLIP_PROFILE")
        else:
            os.environ["CLIP_PROFILE"] = before


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """5 steps of every case under each profile: the 1-rank runs side by side with the clusters, which run one
    at a time."""
    base = tmp_path_factory.mktemp("profiles")
    overrides = {case: TINY + [f"train.batch_size={batch}", f"train.accum_steps={k}"]
                 for case, (_, batch, k) in CASES.items()}
    names = [(profile, case) for profile in ("native", "stock") for case in CASES]
    single = {}
    try:
        for profile, case in names:
            if CASES[case][0] == 1:
                with profile_env(profile):
                    single[profile, case] = start_training(base / f"{profile}_{case}", overrides[case])
        for profile, case in names:
            if CASES[case][0] > 1:
                with profile_env(profile):
                    run_training(base / f"{profile}_{case}", CASES[case][0], overrides[case])
        for (profile, case), proc in single.items():
            finish_training(base / f"{profile}_{case}", proc)
    finally:
        for proc in single.values():
            if proc.poll() is None:
                proc.kill()
    return {(profile, case): {"losses": losses(base / f"{profile}_{case}"),
                              "params": model_params(base / f"{profile}_{case}" / "checkpoints" / "last.ckpt")}
            for profile, case in names}


@pytest.fixture(scope="module")
def floor(runs):
    """The float noise floor of this training: the largest parameter gap between two native runs of the same
    training that differ only in how the global batch is split (ranks, micro-batches), so only in the order
    of float sums."""
    native = [runs["native", case]["params"] for case in CASES]
    gap = max(max_param_diff(a, b)[0] for i, a in enumerate(native) for b in native[i + 1:])
    assert gap > 0, "different splits of the batch must round differently, or the floor measures nothing"
    return gap


@pytest.mark.processes
@pytest.mark.parametrize("case", list(CASES))
def test_stock_and_native_profiles_end_five_steps_at_the_same_parameters(runs, floor, case):
    native, stock = runs["native", case], runs["stock", case]
    assert sorted(stock["losses"]) == sorted(native["losses"]) == [1, 2, 3, 4, 5]
    assert len(set(round(v, 6) for v in native["losses"].values())) == 5, "the runs must learn something"
    diff, key = max_param_diff(stock["params"], native["params"])
    assert diff <= FACTOR * floor, (f"{case}: the profiles end {diff:.3g} apart at {key}, more than {FACTOR} x "
                                    f"the noise floor {floor:.3g}")
    worst = max(abs(stock["losses"][s] - native["losses"][s]) / native["losses"][s] for s in native["losses"])
    assert worst <= 1e-5, f"{case}: per-step losses differ by {worst:.3g} (relative)"
