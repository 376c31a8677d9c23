"""Fused float32 kernels for the CPU backend, compiled from clip/native/kernels.cc on first use:
LayerNorm and QuickGELU, each a forward and a backward pass.

Why: MindSpore 2.10's CPU `LayerNorm` + `LayerNormGrad` and its five-kernel QuickGELU make several passes
over the activations where one suffices (docs/model.md has the measurements). The kernels run through
MindSpore's own extension point, `ops.Custom(func_type="aot")`, with the gradient given as the primitive's
bprop, so autodiff, recompute and graph mode treat them like built-in ops.

The library is built once per source, compiler command, compiler version (`g++ --version`), MindSpore
version (whose custom-op loader calls it) and CPU into `$CLIP_KERNEL_DIR` (default
`~/.cache/mindclip/kernels`)`/<key>/kernels.so`; it is written to a temporary file and renamed, so ranks that
build at the same moment never load a half-written file, and it is loaded once before use, so a cached file
that is damaged or does not fit this system is caught here, not in MindSpore's compiler. When g++ fails or
the library does not load, the native profile uses MindSpore's ops (one warning line); clip.profiles
decides whether these kernels run at all (`CLIP_PROFILE`).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Optional

SOURCE = Path(__file__).resolve().parent / "kernels.cc"
DIR_ENV = "CLIP_KERNEL_DIR"
SWITCH_ENV, STOCK = "CLIP_PROFILE", "stock"  # what silences the warning of a failed build
OFF = "off"
COMPILE = ("g++", "-std=c++17", "-O3", "-march=native", "-shared", "-fPIC")


# ---------------------------------------------------------------- pure helpers

class LoadError(OSError):
    """A library file exists but the dynamic loader refuses it (damaged, truncated, built for another system)."""


def build_key(source: bytes, command: tuple, machine: str, cpu_flags: str, compiler: str, mindspore: str) -> str:
    """Directory name of one build (pure): -march=native code runs only on CPUs with the same features, code
    from another compiler may need another C++ runtime, and MindSpore's custom-op loader calls it."""
    blob = b"\0".join([source, " ".join(command).encode(), machine.encode(), cpu_flags.encode(), compiler.encode(),
                        mindspore.encode()])
    return hashlib.sha256(blob).hexdigest()[:20]


def kernel_root(env: Mapping[str, str]) -> str:
    return env.get(DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mindclip", "kernels")


# ---------------------------------------------------------------- the build (I/O)

def _cpu_flags() -> str:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); the processor's name where /proc has none."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = info.readlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith(("flags", "Features")):
            return line.split(":", 1)[1].strip()
    return platform.processor()


@functools.lru_cache(maxsize=None)
def toolchain() -> dict:
    """The compiler's version (first line of `g++ --version`, "" without g++) and MindSpore's installed version
    ("" without MindSpore), read without importing MindSpore."""
    try:
        out = subprocess.run([COMPILE[0], "--version"], capture_output=True, text=True, timeout=60).stdout
        compiler = out.strip().splitlines()[0] if out.strip() else ""
    except (OSError, subprocess.SubprocessError):
        compiler = ""
    try:
        mindspore = importlib.metadata.version("mindspore")
    except importlib.metadata.PackageNotFoundError:
        mindspore = ""
    return {"compiler": compiler, "mindspore": mindspore}


def _loadable(path: Path, cached: bool) -> str:
    """``path``, once the dynamic loader has accepted it (it stays loaded: MindSpore loads the same file)."""
    try:
        ctypes.CDLL(str(path))
    except OSError as err:
        reason = str(err).removeprefix(f"{path}: ")  # dlerror() names the file first
        raise LoadError(f"cannot load the {'cached' if cached else 'newly built'} {path} ({reason}); delete it to "
                        f"rebuild") from None
    return str(path)


def build(env: Mapping[str, str] = os.environ, source_file: Path = SOURCE) -> str:
    """Path of the library compiled from ``source_file``, building it if needed; raises OSError (LoadError when
    the file will not load) / CalledProcessError on failure."""
    source = source_file.read_bytes()
    tools = toolchain()
    key = build_key(source, COMPILE, platform.machine(), _cpu_flags(), tools["compiler"], tools["mindspore"])
    target = Path(kernel_root(env), key, source_file.stem + ".so")
    if target.exists():
        return _loadable(target, cached=True)
    if shutil.which(COMPILE[0]) is None:
        raise OSError(f"{COMPILE[0]} is not on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(list(COMPILE) + ["-o", partial, str(source_file)], check=True, capture_output=True, text=True,
                       timeout=300)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return _loadable(target, cached=False)


@functools.lru_cache(maxsize=None)
def library() -> Optional[str]:
    """The library for this process, or None to use MindSpore's own ops (warned once)."""
    try:
        return build()
    except (OSError, subprocess.SubprocessError) as err:
        print(f"warning: {failure(err, SOURCE)}; using MindSpore's own, slower CPU ops; set {SWITCH_ENV}={STOCK} "
              f"to silence this", file=sys.stderr)
        return None


def failure(err: Exception, source_file: Path) -> str:
    """What went wrong in `build`, in one line."""
    if isinstance(err, LoadError):
        return str(err)
    detail = (getattr(err, "stderr", None) or str(err)).strip()
    return f"could not build {source_file.name} ({detail.splitlines()[-1] if detail else err})"


# ---------------------------------------------------------------- the ops (MindSpore)

@functools.lru_cache(maxsize=None)
def layer_norm():
    """A differentiable float32 LayerNorm over the last axis on this library,
    `op(x, gamma, beta, eps) -> (y, mean, rstd)` with `eps` a float32 tensor of shape [1]; None when the
    library is not in use (see `library`)."""
    path = library()
    if path is None:
        return None
    from mindspore import ops

    backward = ops.Custom(f"{path}:LayerNormBackward", func_type="aot",
                          out_shape=lambda dy, x, mean, rstd, gamma: (x, gamma, gamma),
                          out_dtype=lambda dy, x, mean, rstd, gamma: (x, x, x))

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = backward(dout[0], x, out[1], out[2], gamma)
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    return ops.Custom(f"{path}:LayerNormForward", func_type="aot",
                      out_shape=lambda x, gamma, beta, eps: (x, x[:-1], x[:-1]),
                      out_dtype=lambda x, gamma, beta, eps: (x, x, x), bprop=bprop)


@functools.lru_cache(maxsize=None)
def quick_gelu():
    """A differentiable float32 QuickGELU, `op(x) = x * sigmoid(1.702 x)`, in one pass forward and one
    backward (MindSpore composes it from five kernels each way); None when the library is not in use."""
    path = library()
    if path is None:
        return None
    from mindspore import ops

    backward = ops.Custom(f"{path}:QuickGeluBackward", func_type="aot",
                          out_shape=lambda dy, x: x, out_dtype=lambda dy, x: x)

    def bprop(x, out, dout):
        return (backward(dout, x),)

    return ops.Custom(f"{path}:QuickGeluForward", func_type="aot",
                      out_shape=lambda x: x, out_dtype=lambda x: x, bprop=bprop)
