"""clip.native.kernels: the fused CPU LayerNorm and QuickGELU against float64 references and MindSpore's own ops,
their build (cached, atomic, keyed), and the fallback to MindSpore's ops under the stock profile or when they
cannot be built."""
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import ops

from clip import profiles
from clip.model.transformer import LayerNorm, QuickGELU
from clip.native import kernels, shm_collectives


def reference(x, gamma, beta, dy, eps=1e-5):
    """LayerNorm and its gradients in float64."""
    x, gamma, beta, dy = (np.asarray(a, np.float64) for a in (x, gamma, beta, dy))
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    xh = (x - mean) * rstd
    g = dy * gamma
    dx = rstd * (g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    return xh * gamma + beta, dx, (dy * xh).sum(rows), dy.sum(rows)


def forward_and_grads(cell, x, dy):
    grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)
    weights = ms.ParameterTuple(cell.trainable_params())
    (dx,), (dgamma, dbeta) = grad(cell, weights)(ms.Tensor(x), ms.Tensor(dy))
    return cell(ms.Tensor(x)).asnumpy(), dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy()


def layer_norm(width, gamma, beta, fused: bool):
    cell = LayerNorm(width)
    cell.weight.set_data(ms.Tensor(gamma))
    cell.bias.set_data(ms.Tensor(beta))
    if not fused:
        cell.norm = profiles.layer_norm(1e-5, profiles.STOCK)
    return cell


@pytest.mark.parametrize("shape", [(4, 7, 64), (50, 3, 768), (33, 512)])
def test_fused_layer_norm_matches_float64_and_mindspores_op(shape):
    assert kernels.layer_norm() is not None, "the suite runs on CPU with g++: the kernel must be in use"
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)  # |mean| > std: the variance must not cancel
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    beta = rng.standard_normal(shape[-1]).astype(np.float32)
    ms.set_context(mode=ms.GRAPH_MODE)
    fused = forward_and_grads(layer_norm(shape[-1], gamma, beta, True), x, dy)
    stock = forward_and_grads(layer_norm(shape[-1], gamma, beta, False), x, dy)
    for name, ours, theirs, exact in zip(("y", "dx", "dgamma", "dbeta"), fused, stock,
                                          reference(x, gamma, beta, dy)):
        scale = np.abs(exact).max()
        assert ours.shape == exact.shape, name
        assert np.abs(ours - exact).max() <= 2e-6 * scale, f"{name}: fused kernel vs float64"
        # and no further from float64 than MindSpore's own kernel, give or take float32 rounding
        assert np.abs(ours - exact).max() <= np.abs(theirs - exact).max() + 4e-7 * scale, name


def test_fused_quick_gelu_matches_float64_and_mindspores_ops():
    assert kernels.quick_gelu() is not None
    rng = np.random.default_rng(7)
    x = np.concatenate([np.linspace(-30, 30, 6000), rng.standard_normal(20004) * 3]).astype(np.float32)
    x = x.reshape(-1, 12)  # 2-D, as in the MLP
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xd = x.astype(np.float64)
    s = 1 / (1 + np.exp(-1.702 * xd))
    exact = (xd * s, dy * (s + 1.702 * xd * s * (1 - s)))
    ms.set_context(mode=ms.GRAPH_MODE)
    grad = ops.GradOperation(sens_param=True)
    results = {}
    # float16 keeps MindSpore's ops in the native profile too
    assert isinstance(QuickGELU(ms.float16).gelu, profiles.StockQuickGELU)
    for name, cell in (("fused", QuickGELU()), ("stock", profiles.quick_gelu(ms.float32, profiles.STOCK))):
        results[name] = (cell(ms.Tensor(x)).asnumpy(), grad(cell)(ms.Tensor(x), ms.Tensor(dy)).asnumpy())
    for i, what in enumerate(("y", "dx")):
        ours, theirs, reference_ = results["fused"][i], results["stock"][i], exact[i]
        scale = np.abs(reference_).max()
        assert np.abs(ours - reference_).max() <= 1e-6 * scale, what
        assert np.abs(ours - reference_).max() <= np.abs(theirs - reference_).max() + 2e-7 * scale, what


def test_fused_layer_norm_is_deterministic_and_the_same_in_pynative():
    rng = np.random.default_rng(1)
    x, dy = (rng.standard_normal((64, 96)).astype(np.float32) for _ in range(2))
    gamma, beta = np.ones(96, np.float32), np.zeros(96, np.float32)
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = forward_and_grads(layer_norm(96, gamma, beta, True), x, dy)
    again = forward_and_grads(layer_norm(96, gamma, beta, True), x, dy)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        pynative = forward_and_grads(layer_norm(96, gamma, beta, True), x, dy)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    for a, b, c in zip(graph, again, pynative):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_build_key_changes_with_source_command_cpu_compiler_and_mindspore():
    args = (b"src", ("g++", "-O3"), "x86_64", "avx2 fma", "g++ (Debian 12.2.0-14) 12.2.0", "2.10.0")
    base = kernels.build_key(*args)
    assert base == kernels.build_key(*args)
    changed = [(b"src2",), (b"src", ("g++", "-O2")), (b"src", args[1], "aarch64"), (b"src", args[1], args[2], "avx2"),
               args[:4] + ("g++ (Debian 13.1.0-1) 13.1.0",), args[:5] + ("2.11.0",)]
    keys = {kernels.build_key(*(change + args[len(change):])) for change in changed}
    assert len(keys | {base}) == 7


@pytest.mark.processes
def test_the_build_key_reads_the_real_compiler_and_mindspore_versions():
    tools = kernels.toolchain()
    first_line = subprocess.run(["g++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    assert tools == {"compiler": first_line, "mindspore": ms.__version__}
    path = kernels.build()
    expected = kernels.build_key(kernels.SOURCE.read_bytes(), kernels.COMPILE, platform.machine(), kernels._cpu_flags(),
                                 first_line, ms.__version__)
    assert os.path.basename(os.path.dirname(path)) == expected


def test_kernel_root_is_the_variable_or_the_user_cache():
    assert kernels.kernel_root({"CLIP_KERNEL_DIR": "/x"}) == "/x"
    assert kernels.kernel_root({}).endswith(os.path.join(".cache", "mindclip", "kernels"))


def test_build_writes_once_under_its_key_and_leaves_no_partial_file(tmp_path):
    env = {"CLIP_KERNEL_DIR": str(tmp_path)}
    path = kernels.build(env)
    assert os.path.dirname(os.path.dirname(path)) == str(tmp_path)
    assert os.listdir(os.path.dirname(path)) == ["kernels.so"]  # named after its source
    stamp = os.stat(path).st_mtime_ns
    assert kernels.build(env) == path
    assert os.stat(path).st_mtime_ns == stamp, "a built library is reused, not rebuilt"


SCRIPT = textwrap.dedent("""
    import numpy as np, mindspore as ms
    from clip import profiles
    from clip.model.transformer import LayerNorm
    ms.set_context(mode=ms.GRAPH_MODE)
    cell = LayerNorm(8)
    y = cell(ms.Tensor(np.arange(16, dtype=np.float32).reshape(2, 8))).asnumpy()
    print("stock" if isinstance(cell.norm, profiles.StockLayerNorm) else "fused", round(float(np.abs(y).sum()), 4))
""")


@pytest.mark.processes
@pytest.mark.parametrize("case", ["stock", "no_compiler", "unwritable", "damaged"])
def test_without_the_kernel_the_model_falls_back_to_mindspores_layer_norm(case, tmp_path, clean_env):
    env = {**clean_env, "CLIP_KERNEL_DIR": str(tmp_path / "kernels")}
    if case == "stock":
        env["CLIP_PROFILE"] = "stock"
    elif case == "no_compiler":
        env["PATH"] = str(tmp_path)  # python is run by its full path; g++ is not found
    elif case == "damaged":
        damaged = damaged_copy(kernels.SOURCE, tmp_path / "kernels")
    else:
        (tmp_path / "kernels").write_text("a file where the directory should be")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    kind, total = result.stdout.split()
    assert kind == "stock"
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    expected = np.abs(reference(x, np.ones(8), np.zeros(8), x)[0]).sum()
    assert abs(float(total) - expected) < 1e-3
    warnings = [line for line in result.stderr.splitlines() if "kernels." in line]
    if case == "damaged":
        assert len(warnings) == 1 and warnings[0].startswith(f"warning: cannot load the cached {damaged} ("), warnings
    if case == "stock":
        assert warnings == []  # the stock profile never builds the kernels
    else:
        assert len(warnings) == 1 and "CLIP_PROFILE=stock" in warnings[0], result.stderr


def damaged_copy(source: Path, root: Path) -> Path:
    """The library built from `source`, cut short, where a build into `root` would find it (as a crash of the
    disk or of a copy would leave it; the build itself never leaves a partial file)."""
    built = Path(kernels.build(source_file=source))
    target = root / built.parent.name / built.name
    target.parent.mkdir(parents=True)
    target.write_bytes(built.read_bytes()[:300])
    return target


@pytest.mark.processes
def test_a_cached_transport_library_that_fails_to_load_falls_back_with_one_warning(tmp_path, clean_env):
    damaged = damaged_copy(shm_collectives.SOURCE, tmp_path / "kernels")
    result = subprocess.run([sys.executable, "-c", "from clip.native import shm_collectives as s; print(s._library())"],
                            env={**clean_env, "CLIP_KERNEL_DIR": str(tmp_path / "kernels")}, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "None", result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: cannot load the cached {damaged} (")
    assert lines[0].endswith("set CLIP_SHM_COLLECTIVES=off to silence this")
