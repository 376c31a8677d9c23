"""Weight conversion from real PyTorch / TorchScript / safetensors files, and the unpickler's safety.

torch is used here only to write genuine input files and as the embedding reference.
"""
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import mindspore as ms
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import clip
from clip.model import create_model, torch_archive
from clip.model.architectures import get_config
from clip.model.convert import convert, expected_shapes, main, to_openai_parameters
from launcher.errors import UserError

from crafted_weights import hf_names
from torch_reference import Shapes, build, random_state_dict, to_torchscript

TINY = get_config("clip_tiny")


@pytest.fixture(scope="module")
def state():
    """Random clip_tiny weights with OpenAI names (torch tensors, float32)."""
    return random_state_dict(Shapes.of(TINY), seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory, state):
    """One real file per supported input format, all holding `state`."""
    d = tmp_path_factory.mktemp("convert")
    paths = {"plain": d / "plain.pt", "open_clip": d / "epoch_3.pt", "legacy": d / "legacy.pth",
             "torchscript": d / "ViT-tiny.pt", "hf": d / "model.safetensors", "hf_bin": d / "pytorch_model.bin"}
    torch.save(state, paths["plain"])
    torch.save({"epoch": 3, "name": "tiny", "state_dict": {"module." + k: v for k, v in state.items()},
                "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}},
               paths["open_clip"])
    torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)
    torch.jit.save(to_torchscript(build(state, Shapes.of(TINY)).half()), str(paths["torchscript"]))
    hf = {k: np.asarray(v, order="C") for k, v in hf_names({k: v.numpy() for k, v in state.items()}, TINY).items()}
    save_file(hf, str(paths["hf"]))
    torch.save({k: torch.from_numpy(v) for k, v in hf.items()}, paths["hf_bin"])
    return paths


@pytest.fixture(scope="module")
def reference_embeddings(state):
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, 3, TINY.image_size, TINY.image_size)).astype(np.float32)
    tokens = clip.tokenize(["a photo of a cat", "two dogs, 3 birds!"], context_length=TINY.context_length)
    with torch.no_grad():
        ref = build(state, Shapes.of(TINY))
        image = ref.encode_image(torch.from_numpy(pixels)).numpy()
        text = ref.encode_text(torch.from_numpy(tokens.astype(np.int64))).numpy()
    return pixels, tokens, image, text


def converted_params(path):
    model = create_model("clip_tiny", checkpoint=str(path))
    return model, {p.name: p.asnumpy() for p in model.get_parameters()}


def test_expected_shapes_are_the_models_parameters():
    model = create_model("clip_tiny")
    assert expected_shapes(TINY) == {p.name: tuple(p.shape) for p in model.get_parameters()}


@pytest.mark.parametrize("kind", ["plain", "open_clip", "legacy", "hf", "hf_bin"])
def test_float32_formats_convert_to_identical_parameters(kind, files, state, tmp_path):
    dst = tmp_path / "out.ckpt"
    result = convert(str(files[kind]), str(dst), "clip_tiny")
    assert result.model == "clip_tiny"
    _, params = converted_params(dst)
    assert set(params) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(params[name], value.numpy(), err_msg=name)


def test_torchscript_fp16_archive(files, state, tmp_path, reference_embeddings):
    dst = tmp_path / "ts.ckpt"
    result = convert(str(files["torchscript"]), str(dst))
    assert (result.source_format, result.model, result.source_dtype) == ("TorchScript archive", "clip_tiny",
                                                                         "float16")
    model, params = converted_params(dst)
    for name, value in state.items():
        np.testing.assert_array_equal(params[name], value.half().float().numpy(), err_msg=name)
    # Same embeddings as the reference holding the same fp16-rounded weights.
    pixels, tokens, _, _ = reference_embeddings
    with torch.no_grad():
        ref = build({k: v.half().float() for k, v in state.items()}, Shapes.of(TINY))
        image = ref.encode_image(torch.from_numpy(pixels)).numpy()
        text = ref.encode_text(torch.from_numpy(tokens.astype(np.int64))).numpy()
    np.testing.assert_allclose(model.encode_image(ms.Tensor(pixels)).asnumpy(), image, atol=1e-4)
    np.testing.assert_allclose(model.encode_text(ms.Tensor(tokens)).asnumpy(), text, atol=1e-4)


def test_round_trip_embeddings_equal_reference(files, tmp_path, reference_embeddings):
    pixels, tokens, image, text = reference_embeddings
    for kind in ("open_clip", "hf"):
        dst = tmp_path / f"{kind}.ckpt"
        convert(str(files[kind]), str(dst), "clip_tiny")
        model = create_model("clip_tiny", checkpoint=str(dst))
        np.testing.assert_allclose(model.encode_image(ms.Tensor(pixels)).asnumpy(), image, atol=1e-4, err_msg=kind)
        np.testing.assert_allclose(model.encode_text(ms.Tensor(tokens)).asnumpy(), text, atol=1e-4, err_msg=kind)


@pytest.mark.processes
def test_command_converts_with_torch_unavailable(files, tmp_path):
    """The runtime path must not need torch: run the real command with `import torch` made to fail."""
    dst = tmp_path / "ViT-tiny.ckpt"
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = ['clip.convert'] + sys.argv[1:]; "
            "runpy.run_module('clip.convert', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(files["torchscript"]), str(dst)], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {dst}: 62 tensors for clip_tiny from TorchScript archive")
    assert sorted(ms.load_checkpoint(str(dst))) == sorted([*expected_shapes(TINY), "architecture"])


def test_float16_output_and_cli(files, state, tmp_path, capsys):
    dst = tmp_path / "half.ckpt"
    assert main([str(files["hf"]), str(dst), "--dtype", "float16", "--model", "clip_tiny"]) == 0
    out = capsys.readouterr().out
    assert "clip_tiny" in out and "safetensors" in out and "Hugging Face" in out
    stored = ms.load_checkpoint(str(dst))
    assert {str(v.dtype) for v in stored.values() if not isinstance(v, str)} == {"Float16"}
    np.testing.assert_array_equal(stored["visual.proj"].asnumpy(), state["visual.proj"].half().numpy())
    assert os.listdir(tmp_path) == ["half.ckpt"]


def test_archive_reader_handles_views_and_dtypes(tmp_path):
    base = torch.arange(30, dtype=torch.float64).reshape(5, 6)
    data = {"view": base[1:, ::2], "t": base.t(), "bf16": torch.tensor([1.5, -2.0]).bfloat16(),
            "long": torch.tensor([7, 8]), "flag": torch.tensor([True, False]), "p": torch.nn.Parameter(torch.ones(2))}
    torch.save(data, tmp_path / "mixed.pt")
    loaded = torch_archive.load(str(tmp_path / "mixed.pt"))
    for name, value in data.items():
        expected = value.detach().float().numpy() if name == "bf16" else value.detach().numpy()
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)
        assert loaded[name].dtype == expected.dtype


@pytest.mark.parametrize("preset,layout", [("clip_vit_b_32", "openai"), ("clip_vit_l_14@336", "openai"),
                                            ("clip_vit_b_16", "hf")])
def test_plain_state_dict_needs_model_and_names_the_candidates(preset, layout):
    """Shape-only arrays (zero strides, no memory) with the published models' shapes: the activation is not
    in the shapes, so without --model the conversion is refused naming every model with these shapes."""
    config = get_config(preset)
    tensors = {name: np.broadcast_to(np.float16(0), shape) for name, shape in expected_shapes(config).items()}
    if layout == "hf":
        tensors = hf_names(tensors, config)
    else:
        tensors = {"state_dict.module." + name: value for name, value in tensors.items()}
        tensors["state_dict.module.input_resolution"] = np.array(config.image_size)
    with pytest.raises(UserError, match=f"a plain state dict does not say its activation or head count; pass "
                                        f"--model with one of the models whose shapes match: {preset} \\(quick_gelu\\)"):
        to_openai_parameters(tensors, "weights", None)
    result = to_openai_parameters(tensors, "weights", preset)
    assert result.model == preset and result.ignored == ()
    assert {name: value.shape for name, value in result.tensors.items()} == expected_shapes(config)


# ------------------------------------------------------------------------------------------------ safety

class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_archive(path, pickled):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/version", "3\n")


def _call_pickle(module, name, argument):
    """Protocol-2 pickle bytes for `module.name(argument)`, written opcode by opcode."""
    data = argument.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(data)) + data
            + b"\x85R.")


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"visual.conv1.weight": _Exploit(marker)}, protocol=2)
    _zip_archive(tmp_path / "evil.pt", payload)
    (tmp_path / "evil_legacy.pt").write_bytes(payload)
    for name in ("evil.pt", "evil_legacy.pt"):
        with pytest.raises(torch_archive.UnsafeArchiveError, match="refusing to load 'posix.system'"):
            torch_archive.load(str(tmp_path / name))
    for module, name in (("builtins", "exec"), ("subprocess", "Popen"), ("torch", "load"),
                         ("copyreg", "_reconstructor")):
        _zip_archive(tmp_path / "raw.pt", _call_pickle(module, name, f"open({str(marker)!r}, 'w')"))
        with pytest.raises(torch_archive.UnsafeArchiveError, match=f"'{module}.{name}'"):
            torch_archive.load(str(tmp_path / "raw.pt"))
    # A TorchScript-looking module name cannot smuggle a callable either: it resolves to an inert class.
    _zip_archive(tmp_path / "smuggled.pt", _call_pickle("__torch__.os", "system", f"touch {marker}"))
    assert torch_archive.load(str(tmp_path / "smuggled.pt")) == {}
    assert not marker.exists()
    # Control: the same bytes given to the standard unpickler do run (harmlessly creating the marker).
    pickle.loads(_call_pickle("builtins", "exec", f"open({str(marker)!r}, 'w').close()"))
    assert marker.exists()


def _run_cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "clip.convert", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.processes
def test_malicious_archive_via_cli(tmp_path):
    marker = tmp_path / "pwned"
    _zip_archive(tmp_path / "evil.pt", pickle.dumps(_Exploit(marker), protocol=2))
    proc = _run_cli([tmp_path / "evil.pt", tmp_path / "out.ckpt"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "refusing" in proc.stderr
    assert not marker.exists() and sorted(os.listdir(tmp_path)) == ["evil.pt"]


# ------------------------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, files, state):
    d = tmp_path_factory.mktemp("bad")
    raw = files["plain"].read_bytes()
    (d / "plain.pt").write_bytes(raw)
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    st = files["hf"].read_bytes()
    (d / "truncated.safetensors").write_bytes(st[: len(st) // 2])
    (d / "notes.txt").write_text("hello, not weights\n")
    torch.save({"encoder.layer.0.weight": torch.ones(2, 2)}, d / "resnet.pt")
    torch.save({k: v for k, v in state.items() if k != "ln_final.weight"}, d / "missing.pt")
    bad = dict(state)
    bad["transformer.resblocks.1.mlp.c_fc.weight"] = torch.zeros(7, 64)
    torch.save(bad, d / "misshaped.pt")
    return d


@pytest.mark.parametrize("src,extra,message", [
    ("absent.pt", [], "absent.pt does not exist"),
    ("truncated.pt", [], "truncated"),
    ("truncated.safetensors", [], "truncated"),
    ("notes.txt", [], "unknown format"),
    ("resnet.pt", [], "unknown layout"),
    ("missing.pt", ["--model", "clip_tiny"], "ln_final.weight"),
    ("misshaped.pt", ["--model", "clip_tiny"], "transformer.resblocks.1.mlp.c_fc.weight has shape (7, 64)"),
    ("plain.pt", [], "a plain state dict does not say its activation or head count; pass --model with one of the "
                     "models whose shapes match: clip_tiny (quick_gelu)"),
    ("plain.pt", ["--model", "vit"], "unknown model 'vit'"),
    ("plain.pt", ["--dtype", "bfloat16"], "--dtype 'bfloat16' is not one of float32, float16"),
    ("plain.pt", ["--model", "clip_vit_b_32"], "visual.class_embedding has shape (128,), clip_vit_b_32 expects (768,)"),
])
def test_bad_input_one_line_exit_2_no_output(bad_files, tmp_path, capsys, src, extra, message):
    dst = tmp_path / "out.ckpt"
    with pytest.raises(SystemExit) as exc:
        main([str(bad_files / src), str(dst), *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.processes
def test_console_script_reports_bad_output_path(bad_files, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "clip-convert")
    proc = subprocess.run([script, str(bad_files / "missing.pt"), str(tmp_path / "out.bin")], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 2 and proc.stderr == f"error: output {tmp_path / 'out.bin'} must end with .ckpt " \
                                                   "(MindSpore loads only .ckpt files)\n"
    assert os.listdir(tmp_path) == []
