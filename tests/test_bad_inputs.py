"""The bad-input catalogue: every command fed wrong, empty, binary, foreign, hostile, huge and tiny inputs.

Each case runs the command's real `main(argv)` in this process (exit code and stderr are exactly what the
command-line entry point gives; a few run as real subprocesses to prove that) and checks: the expected exit
code, no traceback, exactly one line on stderr starting with "error:", and nothing under the case's
workspace (inputs and output location) changed: the directory is hashed before and after.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from benchmark_files import imagenet_wnids, write_clip_benchmark
from cifar_files import RAW_NAMES, draw_images, write_cifar
from crafted_weights import crafted_state, torch_save
import tokenizer_files

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {"config": "clip.config", "train": "clip.train", "eval": "clip.eval", "predict": "clip.predict",
            "convert": "clip.convert", "clip": "clip.__main__", "launcher": "launcher.cli", "wiseft": "clip.wiseft",
            "benchmark": "clip.benchmark"}


# ---------------------------------------------------------------- shared inputs (built once)

class _Storage:
    """Marks where a crafted pickle refers to tensor storage '0'."""


class _Reduced:
    def __init__(self, reduce_value):
        self.reduce_value = reduce_value


class _CraftingPickler(pickle.Pickler):
    """Writes pickles with the same opcodes torch.save emits, but with contents no honest writer makes."""

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            import torch

            return ("storage", torch.FloatStorage, "0", "cpu", 4)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, _Reduced):
            return obj.reduce_value
        return NotImplemented


def torch_zip(path: Path, obj, storage_bytes: bytes = b"\0" * 16) -> str:
    """A PyTorch zip archive holding `obj` as data.pkl and one storage record '0'."""
    buffer = io.BytesIO()
    _CraftingPickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", storage_bytes)
        archive.writestr("archive/version", "3\n")
    return str(path)


def tensor_record(size, stride, offset=0, state=None):
    import torch._utils

    args = (_Storage(), offset, tuple(size), tuple(stride), False, OrderedDict())
    return _Reduced((torch._utils._rebuild_tensor_v2, args) + ((state,) if state is not None else ()))


def safetensors_file(path: Path, header: bytes, body: bytes = b"") -> str:
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Inputs shared by the cases (read-only for them): real checkpoints, images, a CIFAR folder, archives."""
    import mindspore as ms
    import torch

    from clip.model import create_model, weights

    root = tmp_path_factory.mktemp("bad_input_assets")
    a = {"root": root}
    ms.set_seed(0)
    model = create_model("clip_tiny")
    a["ckpt"] = str(root / "clip_tiny.ckpt")
    ms.save_checkpoint(model, a["ckpt"])
    a["foreign_ckpt"] = str(root / "foreign.ckpt")
    ms.save_checkpoint([{"name": "dense.weight", "data": ms.Tensor(np.ones((2, 2), np.float32))}], a["foreign_ckpt"])
    shapes = {p.name: p.asnumpy() for p in model.get_parameters()}
    for name, key, value in (("scalar_pos", "visual.positional_embedding", np.float32(1)),
                             ("nonsquare_pos", "visual.positional_embedding", np.zeros((7, 128), np.float32))):
        a[name] = str(root / f"{name}.ckpt")
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(value if k == key else v)} for k, v in shapes.items()],
                           a[name])
    a["train_ckpt_missing_meta"] = a["ckpt"]
    images, labels = draw_images(len(RAW_NAMES), 2, seed=1)
    a["cifar"] = write_cifar(str(root / "cifar"), images, labels, RAW_NAMES)
    a["png"] = str(root / "ok.png")
    Image.fromarray(images[0]).save(a["png"])
    a["image_dir"] = str(root / "images")
    os.makedirs(a["image_dir"])
    Image.fromarray(images[1]).save(os.path.join(a["image_dir"], "one.png"))
    a["torch_ok"] = torch_save(root / "ok.pt", crafted_state())
    for name, change in (("torch_zero_pos", {"visual__positional_embedding": np.zeros((0, 64))}),
                         ("torch_scalar_pos", {"visual__positional_embedding": np.float32(3)}),
                         ("torch_zero_patch", {"visual__conv1__weight": np.zeros((64, 3, 0, 0))})):
        a[name] = torch_save(root / f"{name}.pt", crafted_state(**change))
    a["torch_no_vision"] = torch_save(root / "no_vision.pt", {"fc.weight": np.zeros((2, 2))})
    a["torch_resnet"] = torch_save(root / "resnet.pt", {"visual.attnpool.c_proj.weight": np.zeros((2, 2))})
    a["torch_int"] = torch_save(root / "int.pt", {k: torch.zeros(v.shape, dtype=torch.int64)
                                                  for k, v in crafted_state().items()})
    a["torch_stride0"] = torch_zip(root / "stride0.pt", {"w": tensor_record((10 ** 12,), (0,))})
    a["torch_view_past"] = torch_zip(root / "view_past.pt", {"w": tensor_record((4,), (1,), offset=3)})
    a["torch_view_big"] = torch_zip(root / "view_big.pt", {"w": tensor_record((2, 4), (0, 1))})
    a["torch_negative"] = torch_zip(root / "negative.pt", {"w": tensor_record((-4,), (1,))})
    a["torch_build"] = torch_zip(root / "build.pt", {"w": tensor_record((4,), (1,), state={"shape": "evil"})})
    a["torch_bad_size"] = torch_zip(root / "bad_size.pt", {"w": tensor_record(("a",), (1,))})
    a["torch_short_storage"] = torch_zip(root / "short.pt", {"w": tensor_record((4,), (1,))}, storage_bytes=b"\0" * 3)
    evil = _Reduced((os.system, ("echo pwned",)))
    a["torch_evil"] = torch_zip(root / "evil.pt", {"w": evil})
    a["torch_nested"] = str(root / "nested.pt")
    with zipfile.ZipFile(a["torch_nested"], "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + b"]" * 200000 + b".")
        archive.writestr("archive/data/0", b"")
    a["zip_no_pkl"] = str(root / "nopkl.pt")
    with zipfile.ZipFile(a["zip_no_pkl"], "w") as archive:
        archive.writestr("hello.txt", "hi")
    ok = Path(a["torch_ok"]).read_bytes()
    (root / "truncated.pt").write_bytes(ok[:len(ok) // 2])
    a["torch_truncated"] = str(root / "truncated.pt")
    a["legacy_bad_magic"] = str(root / "legacy.pt")
    Path(a["legacy_bad_magic"]).write_bytes(pickle.dumps(12345, protocol=2) + pickle.dumps(1001, protocol=2))
    a["st_huge_header"] = safetensors_file(root / "huge.safetensors", b"{" + b" " * 7, b"")
    Path(a["st_huge_header"]).write_bytes(struct.pack("<Q", 10 ** 15) + b'{"a":1}')
    a["st_bad_json"] = safetensors_file(root / "badjson.safetensors", b'{"a": [1, 2')
    a["st_nested"] = safetensors_file(root / "nested.safetensors", b"[" * 50000 + b"]" * 50000)
    a["st_list"] = safetensors_file(root / "list.safetensors", b"[1, 2, 3]")
    a["st_huge_tensor"] = safetensors_file(root / "hugetensor.safetensors", json.dumps(
        {"w": {"dtype": "F32", "shape": [100000, 100000, 100], "data_offsets": [0, 4]}}).encode(), b"\0" * 4)
    a["st_truncated"] = safetensors_file(root / "trunc.safetensors", json.dumps(
        {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode(), b"\0" * 40)
    a["st_bad_shape"] = safetensors_file(root / "badshape.safetensors", json.dumps(
        {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode(), b"\0" * 4)
    a["text"] = str(root / "notes.txt")
    Path(a["text"]).write_text("just some text\n")
    a["t5_model"] = tokenizer_files.t5_sentencepiece(str(root / "spiece.model"))
    for name, hub_name, vocab in (("siglip_json", tokenizer_files.T5_NAME, 256),
                                  ("siglip_small_vocab_json", tokenizer_files.T5_NAME, 64),
                                  ("siglip2_json", tokenizer_files.GEMMA_NAME, 512)):
        a[name] = str(root / f"{name}.json")
        Path(a[name]).write_text(json.dumps(tokenizer_files.tiny_open_clip_config(hub_name, vocab)))
    siglip = create_model(a["siglip_json"])  # a checkpoint whose architecture names T5's vocabulary
    a["siglip_ckpt"] = weights.write(str(root / "siglip.ckpt"), siglip, architecture=siglip.config)
    a["empty"] = str(root / "empty.bin")
    Path(a["empty"]).write_bytes(b"")
    a["binary"] = str(root / "random.bin")
    Path(a["binary"]).write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    a["truncated_png"] = str(root / "truncated.png")
    Path(a["truncated_png"]).write_bytes(Path(a["png"]).read_bytes()[:60])
    a["bomb_png"] = str(root / "bomb.png")
    png_header(Path(a["bomb_png"]), 100000, 100000)
    a["zero_png"] = str(root / "zeroheight.png")
    png_header(Path(a["zero_png"]), 0, 10)
    a["gif_as_png"] = str(root / "gif.png")
    Path(a["gif_as_png"]).write_bytes(b"GIF89a" + b"\0" * 10)
    a["ckpt_as_png"] = str(root / "weights.png")
    Path(a["ckpt_as_png"]).write_bytes(Path(a["ckpt"]).read_bytes()[:4096])
    return a


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (no pixel data): decompression-bomb and zero-size cases."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


# ---------------------------------------------------------------- the catalogue

@dataclass
class Case:
    id: str
    command: str
    argv: list
    expect: str = ""                      # substring of the error line
    files: dict = field(default_factory=dict)  # workspace-relative path -> text, bytes or callable(ws, assets)
    code: int = 2
    category: str = "value"


def C(id, command, argv, expect="", files=None, category="value", code=2):
    return Case(id, command, list(argv), expect, dict(files or {}), code, category)


GOOD_CONFIG = ("model: {name: clip_tiny}\n"
               "data:\n  train: {type: shapes, num_samples: 16}\n  eval: {type: shapes, split: val, num_samples: 8}\n"
               "train: {batch_size: 4, max_steps: 1, mode: pynative, num_workers: 1}\n")

CONFIG_CASES = [
    C("config-missing", "config", ["--config", "{ws}/nope.yaml"], "does not exist", category="missing file"),
    C("config-recall-k-zero", "config", ["--set", "data.eval.recall_k=[1,0]"],
      "data.eval.recall_k[1]: 0 must be at least 1"),
    C("config-directory", "config", ["--config", "{ws}"], "is a directory", category="path is a directory/file"),
    C("config-binary", "config", ["--config", "{ws}/c.yaml"], "c.yaml", {"c.yaml": b"\x00\x01\x02\xff\xfe"},
      category="empty/binary file"),
    C("config-not-utf8", "config", ["--config", "{ws}/c.yaml"], "c.yaml", {"c.yaml": b"train: {lr: \xff\xfe}\n"},
      category="empty/binary file"),
    C("config-list", "config", ["--config", "{ws}/c.yaml"], "expected a mapping", {"c.yaml": "- 1\n- 2\n"},
      category="wrong file"),
    C("config-scalar", "config", ["--config", "{ws}/c.yaml"], "expected a mapping", {"c.yaml": "42\n"},
      category="wrong file"),
    C("config-bad-yaml", "config", ["--config", "{ws}/c.yaml"], "c.yaml", {"c.yaml": "train: {lr: [1, 2\n"},
      category="wrong file"),
    C("config-nested", "config", ["--config", "{ws}/c.yaml"], "nested too deeply", {"c.yaml": "[" * 100000},
      category="nesting"),
    C("config-rank-table", "config", ["--config", "{ws}/c.yaml"], "unknown key 'version'",
      {"c.yaml": '{"version": "1.0", "server_count": "1", "server_list": []}'}, category="wrong file"),
    C("config-old-key", "config", ["--config", "{ws}/c.yaml"], "unknown key 'train.learning_rate'",
      {"c.yaml": "train: {learning_rate: 0.1}\n"}, category="file from another version"),
    C("config-mindformers", "config", ["--config", "{ws}/c.yaml"], "unknown key",
      {"c.yaml": "run_mode: train\nmodel:\n  arch: {type: CLIPModel}\n"}, category="file from another version"),
    C("config-section-scalar", "config", ["--config", "{ws}/c.yaml"], "train", {"c.yaml": "train: 5\n"}),
    C("config-lr-text", "config", ["--set", "train.lr=fast"], "train.lr"),
    C("config-lr-zero", "config", ["--set", "train.lr=0"], "train.lr"),
    C("config-lr-nan", "config", ["--set", "train.lr=.nan"], "train.lr", category="huge/tiny number"),
    C("config-lr-inf", "config", ["--set", "train.lr=.inf"], "train.lr", category="huge/tiny number"),
    C("config-lr-negative", "config", ["--set", "train.lr=-1e-3"], "train.lr", category="huge/tiny number"),
    C("config-lr-tiny-neg", "config", ["--set", "train.min_lr=-1e-300"], "train.min_lr", category="huge/tiny number"),
    C("config-batch-zero", "config", ["--set", "train.batch_size=0"], "train.batch_size", category="huge/tiny number"),
    C("config-batch-float", "config", ["--set", "train.batch_size=2.5"], "train.batch_size"),
    C("config-batch-bool", "config", ["--set", "train.batch_size=true"], "train.batch_size"),
    C("config-steps-negative", "config", ["--set", "train.max_steps=-5"], "train.max_steps",
      category="huge/tiny number"),
    C("config-beta-one", "config", ["--set", "train.beta2=1.0"], "train.beta2", category="huge/tiny number"),
    C("config-eps-zero", "config", ["--set", "train.eps=0"], "train.eps", category="huge/tiny number"),
    C("config-workers-negative", "config", ["--set", "train.num_workers=-1"], "train.num_workers"),
    C("config-dtype", "config", ["--set", "model.dtype=float64"], "model.dtype"),
    C("config-model", "config", ["--set", "model.name=ViT-B/32"], "model.name"),
    C("config-loss-mode", "config", ["--set", "loss.mode=global"], "loss.mode"),
    C("config-patch-dropout-one", "config", ["--set", "model.patch_dropout=1"], "model.patch_dropout: 1.0 must be in [0, 1)",
      category="huge/tiny number"),
    C("config-patch-dropout-text", "config", ["--set", "model.patch_dropout=half"], "model.patch_dropout"),
    C("config-layer-decay-zero", "config", ["--set", "train.layer_decay=0"], "train.layer_decay: 0.0 must be positive",
      category="huge/tiny number"),
    C("config-layer-decay-above-one", "config", ["--set", "train.layer_decay=1.5"], "train.layer_decay: 1.5"),
    C("config-ema-decay-one", "config", ["--set", "train.ema_decay=1"], "train.ema_decay: 1.0",
      category="huge/tiny number"),
    C("config-lr-text-negative", "config", ["--set", "train.lr_text=-1e-4"], "train.lr_text: -0.0001 must be positive"),
    C("config-layer-decay-mindspore-adam", "config", ["--set", "train.optimizer=adamweightdecay", "--set",
                                                      "train.layer_decay=0.75"],
      "train.layer_decay: needs train.optimizer: adamw"),
    C("config-unlocked-without-lock", "config", ["--set", "model.lock_image_unlocked_groups=2"],
      "model.lock_image_unlocked_groups: 2 has no effect without model.lock_image: true"),
    C("config-unlocked-beyond-tower", "config", ["--set", "model.name=clip_tiny", "--set", "model.lock_text=true",
                                                 "--set", "model.lock_text_unlocked_layers=5"],
      "model.lock_text_unlocked_layers: 5 groups: clip_tiny's text tower has 4"),
    C("config-tensorboard-text", "config", ["--set", "train.tensorboard=yes please"], "train.tensorboard"),
    C("config-loss-type", "config", ["--set", "loss.type=sigmoid"], "loss.type"),
    C("config-siglip-full", "config", ["--set", "loss.type=siglip", "--set", "loss.mode=full"], "loss.mode"),
    C("config-train-mode", "config", ["--set", "train.mode=eager"], "train.mode"),
    C("config-train-type", "config", ["--set", "data.train.type=coco"], "data.train.type"),
    C("config-eval-type", "config", ["--set", "data.eval.type=flickr8k"], "data.eval.type"),
    C("config-retrieval-type", "config", ["--set", "data.retrieval.type=coco"], "data.retrieval"),
    C("config-resume-missing", "config", ["--set", "train.resume=/no/such.ckpt"], "train.resume",
      category="missing file"),
    C("config-checkpoint-missing", "config", ["--set", "model.checkpoint={ws}/none.ckpt"], "model.checkpoint",
      category="missing file"),
    C("config-output-empty", "config", ["--set", "output_dir= "], "output_dir"),
    # SigLIP's vocabulary files (docs/models.md "Tokenizers")
    C("config-tokenizer-not-given", "config", ["--set", "model.name={asset:siglip_json}"],
      "model.tokenizer: the model's text tower uses the T5 SentencePiece vocabulary of timm/ViT-B-16-SigLIP; "
      "give its file with model.tokenizer (get tokenizer.json from https://huggingface.co/timm/ViT-B-16-SigLIP",
      category="missing file"),
    C("config-tokenizer-missing", "config", ["--set", "model.name={asset:siglip2_json}", "--set",
                                             "model.tokenizer={ws}/tokenizer.model"],
      "tokenizer file not found (get tokenizer.json from https://huggingface.co/timm/ViT-B-16-SigLIP2, or the "
      "SentencePiece model http://storage.googleapis.com/big_vision/gemma_tokenizer.model)", category="missing file"),
    C("config-tokenizer-text", "config", ["--set", "model.name={asset:siglip_json}", "--set",
                                          "model.tokenizer={asset:text}"],
      "neither a tokenizer.json nor a SentencePiece model", category="wrong file"),
    C("config-tokenizer-other-json", "config", ["--set", "model.name={asset:siglip_json}", "--set",
                                                "model.tokenizer={asset:siglip_json}"],
      "a JSON file but not a Hugging Face tokenizer.json", category="wrong file"),
    C("config-tokenizer-empty-dir", "config", ["--set", "model.name={asset:siglip_json}", "--set",
                                               "model.tokenizer={ws}/vocab"],
      "a directory holding none of tokenizer.json, spiece.model", {"vocab/README": "nothing here\n"},
      category="path is a directory/file"),
    C("config-tokenizer-vocab-too-large", "config", ["--set", "model.name={asset:siglip_small_vocab_json}", "--set",
                                                     "model.tokenizer={asset:t5_model}"],
      "200 tokens do not fit the model's vocab_size 64", category="huge/tiny number"),
    C("config-tokenizer-other-family", "config", ["--set", "model.name={asset:siglip2_json}", "--set",
                                                  "model.tokenizer={asset:t5_model}"],
      "'<eos>' is missing, expected id 1 as in the Gemma vocabulary of timm/ViT-B-16-SigLIP2", category="wrong file"),
    C("config-tokenizer-openai-model", "config", ["--set", "model.name=clip_tiny", "--set",
                                                  "model.tokenizer={asset:t5_model}"],
      "this model uses OpenAI's built-in BPE, give no tokenizer"),
    C("config-set-no-equals", "config", ["--set", "train.lr"], "expected key=value"),
    C("config-set-unknown", "config", ["--set", "train.lrr=1"], "did you mean"),
    C("config-set-nested", "config", ["--set", "train.lr=" + "[" * 100000], "train.lr", category="nesting"),
    C("config-get-unknown", "config", ["--get", "train.nope"], "unknown key"),
    C("config-templates-scalar", "config", ["--set", "data.eval.templates=a {}"], "data.eval.templates"),
    C("config-sha-list", "config", ["--set", "data.eval.sha256=[1, 2]"], "data.eval.sha256"),
    C("config-bad-flag", "config", ["--bogus"], "unrecognized arguments", category="command line"),
    C("config-flag-no-value", "config", ["--config"], "expected one argument", category="command line"),
    # what the schema and the libraries underneath refuse (tests/test_generated_inputs.py generates many more)
    C("config-duplicate-section", "config", ["--config", "{ws}/c.yaml"], "line 2: duplicate key 'train'",
      {"c.yaml": "train: {lr: 0.1}\ntrain: {seed: 2}\n"}, category="wrong file"),
    C("config-int-digits", "config", ["--config", "{ws}/c.yaml"], "more digits than Python reads",
      {"c.yaml": "train: {seed: " + "9" * 5000 + "}\n"}, category="huge/tiny number"),
    C("config-fifo", "config", ["--config", "{ws}/fifo"], "not a regular file",
      {"fifo": lambda ws, assets: os.mkfifo(ws / "fifo")}, category="path is a directory/file"),
    C("config-seed-mindspore", "config", ["--set", "train.seed=4294967296"], "the seeds MindSpore accepts",
      category="huge/tiny number"),
    C("config-lr-float32", "config", ["--set", "train.lr=1e39"], "overflows float32", category="huge/tiny number"),
    C("config-eps-float32-zero", "config", ["--set", "train.eps=1e-50"], "0.0 as a float32",
      category="huge/tiny number"),
    C("config-batch-memory", "config", ["--set", "train.batch_size=2000000000"], "more than this machine's",
      category="huge/tiny number"),
    C("config-workers-cores", "config", ["--set", "train.num_workers=100000"], "cores"),
    C("config-output-invalid-utf8", "config", ["--set", "output_dir=runs/\udcff\udcfe"], "is not valid UTF-8"),
    C("config-path-nul", "config", ["--set", "data.train.path=a\x00b"], "data.train.path: 'a\\x00b' contains a NUL"),
]

TRAIN_CASES = [
    C("train-bad-flag", "train", ["--lr", "1"], "unrecognized arguments", category="command line"),
    C("train-config-missing", "train", ["--config", "{ws}/nope.yaml"], "does not exist", category="missing file"),
    C("train-output-is-file", "train", ["--config", "{ws}/c.yaml", "--set", "output_dir={ws}/out"],
      "is a file, expected a directory", {"c.yaml": GOOD_CONFIG, "out": "I am a file\n"},
      category="path is a directory/file"),
    C("train-output-parent-file", "train", ["--config", "{ws}/c.yaml", "--set", "output_dir={ws}/f/out"],
      "is a file", {"c.yaml": GOOD_CONFIG, "f": "file\n"}, category="path is a directory/file"),
    C("train-earlier-run", "train", ["--config", "{ws}/c.yaml", "--set", "output_dir={ws}/out",
                                     "--set", "train.resume=none"],
      "holds an earlier run", {"c.yaml": GOOD_CONFIG, "out/config.yaml": "model: {name: clip_tiny}\n",
                               "out/metrics.jsonl": '{"step": 1, "loss": 2.0}\n'}, category="earlier run"),
    C("train-unlocked-beyond-checkpoint-tower", "train",
      ["--config", "{ws}/c.yaml", "--set", "model.name=null", "--set", "model.checkpoint={asset:ckpt}", "--set",
       "model.lock_image=true", "--set", "model.lock_image_unlocked_groups=7", "--set", "output_dir={ws}/out"],
      "model.lock_image_unlocked_groups: 7 groups: the model's image tower has 4", {"c.yaml": GOOD_CONFIG}),
    C("train-earlier-run-auto", "train", ["--config", "{ws}/c.yaml", "--set", "output_dir={ws}/out"],
      "train.resume: auto", {"c.yaml": GOOD_CONFIG, "out/metrics.jsonl": '{"step": 1}\n'}, category="earlier run"),
    C("train-csv-images-missing", "train", ["--config", "{ws}/c.yaml", "--set", "output_dir={ws}/out",
                                            "--set", "data.train.type=csv", "--set", "data.train.path={ws}/pairs.csv",
                                            "--set", "train.overwrite=true"],
      "data.train: none of the first", {"c.yaml": GOOD_CONFIG,
                                        "pairs.csv": "filepath,title\nno1.jpg,a cat\nno2.jpg,a dog\n",
                                        "out/config.yaml": "keep me\n", "out/metrics.jsonl": '{"step": 3}\n'},
      category="earlier run"),
    C("train-csv-binary", "train", ["--config", "{ws}/c.yaml", "--set", "data.train.type=csv",
                                    "--set", "data.train.path={asset:binary}", "--set", "output_dir={ws}/out"],
      "", {"c.yaml": GOOD_CONFIG}, category="empty/binary file"),
    C("train-csv-is-image", "train", ["--config", "{ws}/c.yaml", "--set", "data.train.type=csv",
                                      "--set", "data.train.path={asset:png}", "--set", "output_dir={ws}/out"],
      "", {"c.yaml": GOOD_CONFIG}, category="wrong file"),
    C("train-flickr-missing", "train", ["--config", "{ws}/c.yaml", "--set", "data.train.type=flickr8k",
                                        "--set", "data.train.path={ws}/nowhere", "--set", "output_dir={ws}/out"],
      "does not exist", {"c.yaml": GOOD_CONFIG}, category="missing file"),
    C("train-eval-path-missing", "train", ["--config", "{ws}/c.yaml", "--set", "data.eval.type=cifar100",
                                           "--set", "data.eval.path={ws}/nowhere", "--set", "output_dir={ws}/out"],
      "data.eval.path", {"c.yaml": GOOD_CONFIG}, category="missing file"),
    C("train-eval-templates", "train", ["--config", "{ws}/c.yaml", "--set", "data.eval.templates=['a {} {x}']",
                                        "--set", "output_dir={ws}/out"],
      "data.eval.templates", {"c.yaml": GOOD_CONFIG}, category="templates"),
    C("train-eval-templates-number", "train", ["--config", "{ws}/c.yaml", "--set", "data.eval.templates=[3]",
                                              "--set", "output_dir={ws}/out"],
      "data.eval.templates", {"c.yaml": GOOD_CONFIG}, category="templates"),
    C("train-resume-text", "train", ["--config", "{ws}/c.yaml", "--set", "train.resume={asset:text}",
                                     "--set", "output_dir={ws}/out"],
      "not a readable MindSpore checkpoint", {"c.yaml": GOOD_CONFIG}, category="wrong file"),
    C("train-resume-empty", "train", ["--config", "{ws}/c.yaml", "--set", "train.resume={asset:empty}",
                                      "--set", "output_dir={ws}/out"],
      "train.resume", {"c.yaml": GOOD_CONFIG}, category="empty/binary file"),
    C("train-resume-weights-only", "train", ["--config", "{ws}/c.yaml", "--set", "train.resume={asset:ckpt}",
                                             "--set", "output_dir={ws}/out"],
      "is not a training checkpoint", {"c.yaml": GOOD_CONFIG}, category="file from another version"),
    C("train-resume-auto-garbage", "train", ["--config", "{ws}/c.yaml", "--set", "output_dir={ws}/out"],
      "not a readable MindSpore checkpoint", {"c.yaml": GOOD_CONFIG, "out/checkpoints/last.ckpt": b"\x00" * 100,
                                              "out/metrics.jsonl": '{"step": 1}\n'}, category="empty/binary file"),
    C("train-metrics-broken", "train", ["--config", "{ws}/c.yaml", "--set", "output_dir={ws}/out"],
      "metrics.jsonl: line 2", {"c.yaml": GOOD_CONFIG, "out/checkpoints/last.ckpt": b"\x00" * 100,
                                "out/config.yaml": "old\n",
                                "out/metrics.jsonl": '{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n'},
      category="empty/binary file"),
    C("train-model-checkpoint-text", "train", ["--config", "{ws}/c.yaml", "--set", "model.checkpoint={asset:text}",
                                               "--set", "output_dir={ws}/out"],
      "not a readable MindSpore checkpoint", {"c.yaml": GOOD_CONFIG}, category="wrong file"),
    C("train-model-checkpoint-foreign", "train", ["--config", "{ws}/c.yaml",
                                                  "--set", "model.checkpoint={asset:foreign_ckpt}",
                                                  "--set", "output_dir={ws}/out"],
      "has no parameter", {"c.yaml": GOOD_CONFIG}, category="wrong file"),
    C("train-ema-weights-without-checkpoint", "train", ["--config", "{ws}/c.yaml", "--set", "model.ema_weights=true",
                                                        "--set", "output_dir={ws}/out"],
      "no checkpoint to take the moving averages from", {"c.yaml": GOOD_CONFIG}, category="missing file"),
    C("train-ema-weights-of-weights-only-checkpoint", "train",
      ["--config", "{ws}/c.yaml", "--set", "model.name=null", "--set", "model.checkpoint={asset:ckpt}",
       "--set", "model.ema_weights=true", "--set", "output_dir={ws}/out"],
      "holds no moving averages", {"c.yaml": GOOD_CONFIG}, category="wrong file"),
    C("train-batch-too-big", "train", ["--config", "{ws}/c.yaml", "--set", "train.batch_size=20000",
                                       "--set", "output_dir={ws}/out"],
      "fewer than one global batch", {"c.yaml": GOOD_CONFIG}, category="huge/tiny number"),
    C("train-output-fifo", "train", ["--config", "{ws}/c.yaml", "--set", "output_dir={ws}/fifo"],
      "not a regular file", {"c.yaml": GOOD_CONFIG, "fifo": lambda ws, assets: os.mkfifo(ws / "fifo")},
      category="path is a directory/file"),
]


def cifar_config(path="{asset:cifar}", **extra):
    lines = ["model: {name: clip_tiny}", "data:", f"  eval: {{type: cifar100, path: '{path}'}}"]
    return "\n".join(lines + [f"{k}: {v}" for k, v in extra.items()]) + "\n"


def write_cifar_variant(ws: Path, assets, change: Callable[[dict, dict], None]) -> None:
    """A copy of the asset CIFAR folder with its pickles changed by change(split, meta)."""
    src = Path(assets["cifar"]) / "cifar-100-python"
    folder = ws / "cifar" / "cifar-100-python"
    folder.mkdir(parents=True)
    with open(src / "test", "rb") as f:
        split = pickle.load(f)
    with open(src / "meta", "rb") as f:
        meta = pickle.load(f)
    change(split, meta)
    for name, obj in (("test", split), ("train", split), ("meta", meta)):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)


def cifar_changed(change):
    return {"": lambda ws, a: write_cifar_variant(ws, a, change), "c.yaml": cifar_config("{ws}/cifar")}


CB_ARGS = ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}", "--set", "data.eval.type=clip_benchmark",
           "--set", "data.eval.path={ws}/cb", "--set", "output_dir={ws}/out"]


def cb_set(ws: Path, assets, classnames=("cat", "dog"), labels=(0, 1), first_image=None) -> None:
    """A two-sample, two-shard CLIP_benchmark classification set and a config evaluating it."""
    png = Path(assets["png"]).read_bytes()
    samples = [{"png": first_image if i == 0 and first_image else png, "cls": f"{label}".encode()}
               for i, label in enumerate(labels)]
    write_clip_benchmark(ws / "cb", samples, classnames=classnames, nshards=2)
    (ws / "c.yaml").write_text(cifar_config())


def imagenet_folders(root: Path, image: str, skip: int) -> None:
    """ImageNet's val layout less the wnid at index `skip`, one image in the first folder."""
    folders = [w for i, w in enumerate(imagenet_wnids()) if i != skip]
    for name in folders:
        (root / name).mkdir(parents=True)
    shutil.copy(image, root / folders[0] / "x.png")


EVAL_CASES = [
    C("eval-siglip-checkpoint-without-tokenizer", "eval",
      ["--checkpoint", "{asset:siglip_ckpt}", "--set", "output_dir={ws}/out"],
      "model.tokenizer: the model's text tower uses the T5 SentencePiece vocabulary of timm/ViT-B-16-SigLIP; give "
      "its file", category="missing file"),
    C("eval-tokenizer-missing", "eval", ["--set", "model.name={asset:siglip_json}", "--tokenizer", "{ws}/spiece.model"],
      "model.tokenizer: '{ws}/spiece.model': tokenizer file not found (get tokenizer.json from "
      "https://huggingface.co/timm/ViT-B-16-SigLIP", category="missing file"),
    C("eval-bad-flag", "eval", ["--task", "captioning"], "invalid choice", category="command line"),
    C("eval-checkpoint-missing", "eval", ["--checkpoint", "{ws}/w.ckpt"], "does not exist", category="missing file"),
    C("eval-checkpoint-directory", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{ws}",
                                            "--set", "output_dir={ws}/out"],
      "", {"c.yaml": cifar_config()}, category="path is a directory/file"),
    C("eval-checkpoint-text", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:text}",
                                       "--set", "output_dir={ws}/out"],
      "not a readable MindSpore checkpoint", {"c.yaml": cifar_config()}, category="wrong file"),
    C("eval-checkpoint-empty", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:empty}",
                                        "--set", "output_dir={ws}/out"],
      "checkpoint", {"c.yaml": cifar_config()}, category="empty/binary file"),
    C("eval-checkpoint-binary", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:binary}",
                                         "--set", "output_dir={ws}/out"],
      "not a readable MindSpore checkpoint", {"c.yaml": cifar_config()}, category="empty/binary file"),
    C("eval-checkpoint-foreign", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:foreign_ckpt}",
                                          "--set", "output_dir={ws}/out"],
      "has no parameter", {"c.yaml": cifar_config()}, category="wrong file"),
    C("eval-checkpoint-other-model", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                              "--set", "model.name=clip_vit_b_32", "--set", "output_dir={ws}/out"],
      "has shape", {"c.yaml": cifar_config()}, category="file from another version"),
    C("eval-ema-weights-of-weights-only-checkpoint", "eval",
      ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}", "--set", "model.ema_weights=true",
       "--set", "output_dir={ws}/out"], "holds no moving averages", {"c.yaml": cifar_config()}, category="wrong file"),
    C("eval-checkpoint-pytorch", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:torch_ok}",
                                          "--set", "output_dir={ws}/out"],
      "not a readable MindSpore checkpoint", {"c.yaml": cifar_config()}, category="wrong file"),
    C("eval-output-is-file", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                      "--set", "output_dir={ws}/out"],
      "is a file", {"c.yaml": cifar_config(), "out": "file\n"}, category="path is a directory/file"),
    C("eval-json-is-directory", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                         "--set", "output_dir={ws}/out"],
      "is a directory", {"c.yaml": cifar_config(), "out/eval.json/keep": "x\n"}, category="path is a directory/file"),
    C("eval-data-missing", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                    "--set", "output_dir={ws}/out"],
      "does not exist", {"c.yaml": cifar_config("{ws}/nowhere")}, category="missing file"),
    C("eval-data-is-file", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                    "--set", "output_dir={ws}/out"],
      "data.eval.path", {"c.yaml": cifar_config("{asset:png}")}, category="path is a directory/file"),
    C("eval-no-eval-set", "eval", ["--config", "{ws}/c.yaml", "--set", "data.eval=null",
                                   "--set", "output_dir={ws}/out"],
      "data.eval is not set", {"c.yaml": cifar_config()}),
    C("eval-retrieval-unset", "eval", ["--task", "retrieval", "--set", "output_dir={ws}/out"],
      "data.retrieval is not set"),
    C("eval-templates-extra-field", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                             "--set", "data.eval.templates=['a {} {x}']",
                                             "--set", "output_dir={ws}/out"],
      "data.eval.templates", {"c.yaml": cifar_config()}, category="templates"),
    C("eval-templates-positional", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                            "--set", "data.eval.templates=['a {0} {1}']",
                                            "--set", "output_dir={ws}/out"],
      "data.eval.templates", {"c.yaml": cifar_config()}, category="templates"),
    C("eval-templates-brace", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                       "--set", "data.eval.templates=['a { photo']", "--set", "output_dir={ws}/out"],
      "data.eval.templates", {"c.yaml": cifar_config()}, category="templates"),
    C("eval-cifar-split", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                   "--set", "data.eval.split=dev", "--set", "output_dir={ws}/out"],
      "not a CIFAR-100 split", {"c.yaml": cifar_config()}),
    C("eval-cifar-labels-text", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                         "--set", "output_dir={ws}/out"],
      "fine_labels", cifar_changed(lambda s, m: s.update({b"fine_labels": ["x"] * len(s[b"fine_labels"])})),
      category="CIFAR types"),
    C("eval-cifar-labels-int", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                        "--set", "output_dir={ws}/out"],
      "fine_labels", cifar_changed(lambda s, m: s.update({b"fine_labels": 7})), category="CIFAR types"),
    C("eval-cifar-labels-range", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                          "--set", "output_dir={ws}/out"],
      "labels span", cifar_changed(lambda s, m: s.update({b"fine_labels": [500] * len(s[b"fine_labels"])})),
      category="CIFAR types"),
    C("eval-cifar-names-int", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                       "--set", "output_dir={ws}/out"],
      "fine_label_names", cifar_changed(lambda s, m: m.update({b"fine_label_names": 12})), category="CIFAR types"),
    C("eval-cifar-names-mixed", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                         "--set", "output_dir={ws}/out"],
      "fine_label_names", cifar_changed(lambda s, m: m.update({b"fine_label_names": [1, 2.5, None]})),
      category="CIFAR types"),
    C("eval-cifar-data-list", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                       "--set", "output_dir={ws}/out"],
      "data", cifar_changed(lambda s, m: s.update({b"data": [[1, 2, 3]]})), category="CIFAR types"),
    C("eval-cifar-meta-is-split", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                           "--set", "output_dir={ws}/out"],
      "fine_label_names", cifar_changed(lambda s, m: (m.clear(), m.update(s))), category="wrong file"),
    C("eval-cifar-pickle-evil", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                         "--set", "output_dir={ws}/out"],
      "not a readable CIFAR-100 pickle",
      {"": lambda ws, a: evil_cifar(ws), "c.yaml": cifar_config("{ws}/cifar")}, category="hostile file"),
    C("eval-imagefolder-empty", "eval", ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}",
                                         "--set", "data.eval.type=imagefolder", "--set", "data.eval.path={ws}/folder",
                                         "--set", "output_dir={ws}/out"],
      "data.eval", {"c.yaml": cifar_config(), "folder/cat/readme.txt": "no images\n"}, category="wrong file"),
    C("eval-imagefolder-classnames-binary", "eval",
      ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}", "--set", "data.eval.type=imagefolder",
       "--set", "data.eval.path={ws}/folder", "--set", "data.eval.classnames_file={ws}/names.txt",
       "--set", "output_dir={ws}/out"],
      "names.txt: cannot read data.eval.classnames_file",
      {"c.yaml": cifar_config(), "folder": lambda ws, a: image_folder(ws / "folder", a["png"]),
       "names.txt": b"\xff\xfe\x00cat\n"}, category="empty/binary file"),
    C("eval-metrics-json-as-config", "eval", ["--config", "{ws}/metrics.jsonl"], "metrics.jsonl",
      {"metrics.jsonl": '{"step": 1}\n{"step": 2}\n'}, category="wrong file"),
    C("eval-probe-no-train-split", "eval",
      ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}", "--task", "linear_probe",
       "--set", "data.eval.type=imagefolder", "--set", "data.eval.path={ws}/folder", "--set", "data.eval.split=val",
       "--set", "output_dir={ws}/out"],
      "the train split's classes ['val'] are not those of split 'val' ['cat']",
      {"c.yaml": cifar_config(), "": lambda ws, a: image_folder(ws / "folder" / "val", a["png"])},
      category="missing file"),
    C("eval-cb-no-classnames", "eval", CB_ARGS, "{ws}/cb/classnames.txt: missing",
      {"": lambda ws, a: cb_set(ws, a, classnames=None)}, category="missing file"),
    C("eval-cb-no-nshards", "eval", CB_ARGS, "{ws}/cb/test/nshards.txt: missing",
      {"": lambda ws, a: (cb_set(ws, a), os.remove(ws / "cb" / "test" / "nshards.txt"))}, category="missing file"),
    C("eval-cb-cls-out-of-range", "eval", CB_ARGS,
      "{ws}/cb/test/1.tar: sample 's00001': .cls 2 is outside the class range 0..1 of {ws}/cb/classnames.txt",
      {"": lambda ws, a: cb_set(ws, a, labels=(0, 2))}),
    C("eval-cb-corrupt-image", "eval", CB_ARGS,
      "{ws}/cb/test/0.tar: sample 's00000': image .png cannot be decoded",
      {"": lambda ws, a: cb_set(ws, a, first_image=b"\x89PNG\r\n\x1a\n" + b"\0" * 40)}, category="empty/binary file"),
    C("eval-imagenet-999-classes", "eval",
      ["--config", "{ws}/c.yaml", "--checkpoint", "{asset:ckpt}", "--set", "data.eval.type=imagenet",
       "--set", "data.eval.path={ws}/imagenet", "--set", "output_dir={ws}/out"],
      "{ws}/imagenet/val' has 999 class folders, missing n01440764",
      {"c.yaml": cifar_config(), "": lambda ws, a: imagenet_folders(ws / "imagenet" / "val", a["png"], skip=0)},
      category="missing file"),
]


def image_folder(root: Path, image: str) -> None:
    (root / "cat").mkdir(parents=True)
    shutil.copy(image, root / "cat" / "x.png")


def evil_cifar(ws: Path) -> None:
    folder = ws / "cifar" / "cifar-100-python"
    folder.mkdir(parents=True)
    payload = b"cos\nsystem\n(S'echo pwned'\ntR."
    for name in ("meta", "test", "train"):
        (folder / name).write_bytes(payload)


PREDICT = ["--checkpoint", "{asset:ckpt}", "--labels", "cat,dog"]
PREDICT_CASES = [
    C("predict-no-args", "predict", [], "required", category="command line"),
    C("predict-siglip-checkpoint-missing-parameter", "predict", ["--checkpoint", "{ws}/siglip.ckpt", "--labels", "a,b",
                                                                 "--image", "{asset:png}"],
      "has no parameter visual.attn_pool.latent", {"siglip.ckpt": lambda ws, a: tiny_siglip_checkpoint(ws)},
      category="shapes"),
    C("predict-siglip-checkpoint-without-tokenizer", "predict",
      ["--checkpoint", "{asset:siglip_ckpt}", "--labels", "cat,dog", "--image", "{asset:png}"],
      "--tokenizer: the model's text tower uses the T5 SentencePiece vocabulary of timm/ViT-B-16-SigLIP; give its "
      "file with --tokenizer (get tokenizer.json from https://huggingface.co/timm/ViT-B-16-SigLIP", category="missing file"),
    C("predict-tokenizer-openai-model", "predict", PREDICT + ["--image", "{asset:png}", "--tokenizer", "{asset:t5_model}"],
      "--tokenizer: '{asset:t5_model}' is for models with a SentencePiece / Hugging Face vocabulary (SigLIP); "
      "this model uses OpenAI's built-in BPE"),
    C("predict-ema-weights-of-weights-only-checkpoint", "predict", PREDICT + ["--image", "{asset:png}", "--ema-weights"],
      "holds no moving averages", category="wrong file"),
    C("predict-topk-text", "predict", PREDICT + ["--image", "{asset:png}", "--top-k", "many"], "invalid int value",
      category="command line"),
    C("predict-dtype", "predict", PREDICT + ["--image", "{asset:png}", "--dtype", "int8"], "invalid choice",
      category="command line"),
    C("predict-topk-zero", "predict", PREDICT + ["--image", "{asset:png}", "--top-k", "0"], "--top-k",
      category="huge/tiny number"),
    C("predict-topk-negative", "predict", PREDICT + ["--image", "{asset:png}", "--top-k", "-3"], "--top-k",
      category="huge/tiny number"),
    C("predict-image-missing", "predict", PREDICT + ["--image", "{ws}/cat.png"], "does not exist",
      category="missing file"),
    C("predict-image-empty-dir", "predict", PREDICT + ["--image", "{ws}/d"], "no image files", {"d/notes.txt": "x"},
      category="path is a directory/file"),
    C("predict-image-empty-file", "predict", PREDICT + ["--image", "{asset:empty}"], "cannot be read",
      category="empty/binary file"),
    C("predict-image-text", "predict", PREDICT + ["--image", "{asset:text}"], "cannot be read", category="wrong file"),
    C("predict-image-binary", "predict", PREDICT + ["--image", "{asset:binary}"], "cannot be read",
      category="empty/binary file"),
    C("predict-image-truncated", "predict", PREDICT + ["--image", "{asset:truncated_png}"], "cannot be read",
      category="empty/binary file"),
    C("predict-image-bomb", "predict", PREDICT + ["--image", "{asset:bomb_png}"], "cannot be read",
      category="huge/tiny number"),
    C("predict-image-zero-size", "predict", PREDICT + ["--image", "{asset:zero_png}"], "cannot be read",
      category="huge/tiny number"),
    C("predict-image-gif-named-png", "predict", PREDICT + ["--image", "{asset:gif_as_png}"], "cannot be read",
      category="wrong file"),
    C("predict-image-is-checkpoint", "predict", PREDICT + ["--image", "{asset:ckpt_as_png}"], "cannot be read",
      category="wrong file"),
    C("predict-labels-empty", "predict", ["--checkpoint", "{asset:ckpt}", "--labels", ",", "--image", "{asset:png}"],
      "--labels"),
    C("predict-labels-duplicate", "predict", ["--checkpoint", "{asset:ckpt}", "--labels", "cat,cat",
                                              "--image", "{asset:png}"], "given twice"),
    C("predict-template-none", "predict", PREDICT + ["--image", "{asset:png}", "--template", "a photo"], "--template",
      category="templates"),
    C("predict-template-extra", "predict", PREDICT + ["--image", "{asset:png}", "--template", "a {} {x}"],
      "--template", category="templates"),
    C("predict-template-attr", "predict", PREDICT + ["--image", "{asset:png}", "--template", "a {.__class__}"],
      "--template", category="templates"),
    C("predict-checkpoint-missing", "predict", ["--checkpoint", "{ws}/w.ckpt", "--labels", "a,b",
                                                "--image", "{asset:png}"], "does not exist", category="missing file"),
    C("predict-checkpoint-directory", "predict", ["--checkpoint", "{ws}", "--labels", "a,b", "--image", "{asset:png}"],
      "is a directory", category="path is a directory/file"),
    C("predict-checkpoint-text", "predict", ["--checkpoint", "{asset:text}", "--labels", "a,b",
                                             "--image", "{asset:png}"], "not a readable", category="wrong file"),
    C("predict-checkpoint-foreign", "predict", ["--checkpoint", "{asset:foreign_ckpt}", "--labels", "a,b",
                                                "--image", "{asset:png}"], "no parameter", category="wrong file"),
    C("predict-checkpoint-pytorch", "predict", ["--checkpoint", "{asset:torch_ok}", "--labels", "a,b",
                                                "--image", "{asset:png}"], "not a readable", category="wrong file"),
    C("predict-scalar-pos", "predict", ["--checkpoint", "{asset:scalar_pos}", "--labels", "a,b",
                                        "--image", "{asset:png}"], "positional_embedding", category="shapes"),
    C("predict-nonsquare-pos", "predict", ["--checkpoint", "{asset:nonsquare_pos}", "--labels", "a,b",
                                           "--image", "{asset:png}"], "positional_embedding", category="shapes"),
    C("predict-model-unknown", "predict", PREDICT + ["--image", "{asset:png}", "--model", "clip_vit_h_14"],
      "clip_vit_h_14"),
    C("predict-model-mismatch", "predict", PREDICT + ["--image", "{asset:png}", "--model", "clip_vit_b_32"],
      "has shape", category="file from another version"),
    C("predict-topk-arabic-digit", "predict", PREDICT + ["--image", "{asset:png}", "--top-k", "\u0663"],
      "invalid int value", category="command line"),
]

CONVERT_CASES = [
    C("convert-no-args", "convert", [], "required", category="command line"),
    C("convert-src-missing", "convert", ["{ws}/nope.pt", "{ws}/out.ckpt"], "does not exist", category="missing file"),
    C("convert-src-directory", "convert", ["{ws}", "{ws}/out.ckpt"], "is not a file",
      category="path is a directory/file"),
    C("convert-src-empty", "convert", ["{asset:empty}", "{ws}/out.ckpt"], "unknown format",
      category="empty/binary file"),
    C("convert-src-text", "convert", ["{asset:text}", "{ws}/out.ckpt"], "unknown format", category="wrong file"),
    C("convert-src-binary", "convert", ["{asset:binary}", "{ws}/out.ckpt"], "", category="empty/binary file"),
    C("convert-src-png", "convert", ["{asset:png}", "{ws}/out.ckpt"], "unknown format", category="wrong file"),
    C("convert-src-mindspore", "convert", ["{asset:ckpt}", "{ws}/out.ckpt"], "", category="wrong file"),
    C("convert-truncated", "convert", ["{asset:torch_truncated}", "{ws}/out.ckpt"], "", category="empty/binary file"),
    C("convert-zip-no-pkl", "convert", ["{asset:zip_no_pkl}", "{ws}/out.ckpt"], "data.pkl", category="wrong file"),
    C("convert-legacy-magic", "convert", ["{asset:legacy_bad_magic}", "{ws}/out.ckpt"], "magic", category="wrong file"),
    C("convert-evil-pickle", "convert", ["{asset:torch_evil}", "{ws}/out.ckpt"], "refusing to load",
      category="hostile file"),
    C("convert-pickle-build", "convert", ["{asset:torch_build}", "{ws}/out.ckpt"], "overwrite",
      category="hostile file"),
    C("convert-pickle-nested", "convert", ["{asset:torch_nested}", "{ws}/out.ckpt"], "", category="nesting"),
    C("convert-stride0-terabytes", "convert", ["{asset:torch_stride0}", "{ws}/out.ckpt"], "elements",
      category="hostile file"),
    C("convert-view-past-storage", "convert", ["{asset:torch_view_past}", "{ws}/out.ckpt"], "storage",
      category="hostile file"),
    C("convert-view-bigger-than-storage", "convert", ["{asset:torch_view_big}", "{ws}/out.ckpt"], "storage",
      category="hostile file"),
    C("convert-negative-size", "convert", ["{asset:torch_negative}", "{ws}/out.ckpt"], "", category="hostile file"),
    C("convert-text-size", "convert", ["{asset:torch_bad_size}", "{ws}/out.ckpt"], "", category="hostile file"),
    C("convert-short-storage", "convert", ["{asset:torch_short_storage}", "{ws}/out.ckpt"], "truncated",
      category="empty/binary file"),
    C("convert-zero-pos", "convert", ["{asset:torch_zero_pos}", "{ws}/out.ckpt"], "positional_embedding",
      category="shapes"),
    C("convert-scalar-pos", "convert", ["{asset:torch_scalar_pos}", "{ws}/out.ckpt"], "positional_embedding",
      category="shapes"),
    C("convert-zero-patch", "convert", ["{asset:torch_zero_patch}", "{ws}/out.ckpt"], "conv1", category="shapes"),
    C("convert-not-clip", "convert", ["{asset:torch_no_vision}", "{ws}/out.ckpt"], "unknown layout",
      category="wrong file"),
    C("convert-resnet", "convert", ["{asset:torch_resnet}", "{ws}/out.ckpt"], "ResNet",
      category="file from another version"),
    C("convert-integer-tensors", "convert", ["{asset:torch_int}", "{ws}/out.ckpt"], "floating point",
      category="wrong file"),
    C("convert-wrong-model", "convert", ["{asset:torch_ok}", "{ws}/out.ckpt", "--model", "clip_vit_b_32"],
      "has shape", category="file from another version"),
    C("convert-unknown-model", "convert", ["{asset:torch_ok}", "{ws}/out.ckpt", "--model", "RN50"], "RN50"),
    C("convert-dtype", "convert", ["{asset:torch_ok}", "{ws}/out.ckpt", "--dtype", "bfloat16"], "--dtype"),
    C("convert-st-huge-header", "convert", ["{asset:st_huge_header}", "{ws}/out.ckpt"], "header",
      category="huge/tiny number"),
    C("convert-st-bad-json", "convert", ["{asset:st_bad_json}", "{ws}/out.ckpt"], "header", category="wrong file"),
    C("convert-st-nested", "convert", ["{asset:st_nested}", "{ws}/out.ckpt"], "", category="nesting"),
    C("convert-st-list", "convert", ["{asset:st_list}", "{ws}/out.ckpt"], "unknown format", category="wrong file"),
    C("convert-st-huge-tensor", "convert", ["{asset:st_huge_tensor}", "{ws}/out.ckpt"], "elements",
      category="huge/tiny number"),
    C("convert-st-truncated", "convert", ["{asset:st_truncated}", "{ws}/out.ckpt"], "", category="empty/binary file"),
    C("convert-st-negative-shape", "convert", ["{asset:st_bad_shape}", "{ws}/out.ckpt"], "shape",
      category="hostile file"),
    C("convert-dst-not-ckpt", "convert", ["{asset:torch_ok}", "{ws}/out.pt"], ".ckpt"),
    C("convert-dst-directory", "convert", ["{asset:torch_ok}", "{ws}/d.ckpt"], "is a directory", {"d.ckpt/x": "x"},
      category="path is a directory/file"),
    C("convert-dst-parent-missing", "convert", ["{asset:torch_ok}", "{ws}/no/out.ckpt"], "does not exist",
      category="missing file"),
    C("convert-dst-parent-file", "convert", ["{asset:torch_ok}", "{ws}/f/out.ckpt"], "", {"f": "file\n"},
      category="path is a directory/file"),
    # open_clip SigLIP weights (a timm trunk) with the Hub's open_clip_config.json beside them
    C("convert-siglip-unknown-trunk", "convert", ["{ws}/hub/w.bin", "{ws}/out.ckpt"],
      'vision_cfg.timm_model_name = "vit_base_patch16_224" is not supported here',
      {"hub": lambda ws, a: siglip_hub(ws, vision_cfg={"timm_model_name": "vit_base_patch16_224"})},
      category="file from another version"),
    C("convert-siglip-text-mlp-projection", "convert", ["{ws}/hub/w.bin", "{ws}/out.ckpt"],
      'text_cfg.proj_type = "mlp" is not supported here', {"hub": lambda ws, a: siglip_hub(
          ws, text_cfg={"proj_type": "mlp"})}, category="file from another version"),
    C("convert-siglip-preprocess-longest", "convert", ["{ws}/hub/w.bin", "{ws}/out.ckpt"],
      'preprocess_cfg.resize_mode = "longest" is not supported here',
      {"hub": lambda ws, a: siglip_hub(ws, preprocess_cfg={"resize_mode": "longest"})}),
    C("convert-siglip-missing-tensor", "convert", ["{ws}/hub/w.bin", "{ws}/out.ckpt", "--model", "ViT-B-16-SigLIP"],
      "missing tensor visual.positional_embedding (and 312 more) required by ViT-B-16-SigLIP",
      {"hub": lambda ws, a: siglip_hub(ws, config=False)}, category="shapes"),
    C("convert-hf-siglip", "convert", ["{ws}/hub/w.bin", "{ws}/out.ckpt"], "model_type 'siglip' is not supported here",
      {"hub": lambda ws, a: hf_siglip(ws)}, category="file from another version"),
    C("convert-siglip-as-clip", "convert", ["{ws}/hub/w.bin", "{ws}/out.ckpt", "--model", "ViT-B-16"],
      "missing tensor visual.class_embedding", {"hub": lambda ws, a: siglip_hub(ws, config=False)},
      category="file from another version"),
]


def tiny_siglip_checkpoint(ws: Path) -> None:
    """siglip.ckpt: a converted SigLIP-architecture checkpoint (tiny towers) without its attention pool's latent."""
    import dataclasses

    import mindspore as ms

    from clip.model import weights
    from clip.model.architectures import PRESETS, expected_shapes

    config = dataclasses.replace(PRESETS["ViT-B-16-SigLIP"], image_size=32, vision_width=64, vision_layers=1,
                                 vision_heads=2, embed_dim=64, text_width=64, text_layers=1, text_heads=2,
                                 vocab_size=49408, context_length=16, hf_tokenizer_name=None, tokenizer_clean=None)
    weights.write(str(ws / "siglip.ckpt"), [{"name": name, "data": ms.Tensor(np.zeros(shape, np.float32))}
                                            for name, shape in expected_shapes(config).items()
                                            if name != "visual.attn_pool.latent"], architecture=config)


def hf_siglip(ws: Path) -> None:
    """hub/: Hugging Face's SiglipModel layout (CLIP's tensor names, its own config.json model_type)."""
    (ws / "hub").mkdir()
    torch_save(ws / "hub" / "w.bin", {"vision_model.embeddings.patch_embedding.weight": np.zeros((8, 3, 4, 4))})
    (ws / "hub" / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": {"hidden_size": 8},
                                                        "text_config": {"hidden_size": 8}}))


def siglip_hub(ws: Path, config: bool = True, **changes) -> None:
    """hub/w.bin: open_clip ViT-B-16-SigLIP's patch weight alone (its trunk's names say the layout); with
    hub/open_clip_config.json as the Hub ships it, `changes` merged into its sections."""
    import copy

    folder = ws / "hub"
    folder.mkdir()
    torch_save(folder / "w.bin", {"visual.trunk.patch_embed.proj.weight": np.zeros((768, 3, 16, 16), np.float32)})
    if config:
        from clip.model.architectures import _ASSET

        data = {"model_cfg": copy.deepcopy(_ASSET["models"]["ViT-B-16-SigLIP"]),
                "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                                   "resize_mode": "squash"}}
        for key, value in changes.items():
            (data if key == "preprocess_cfg" else data["model_cfg"])[key].update(value)
        (folder / "open_clip_config.json").write_text(json.dumps(data))

CLIP_CASES = [
    C("clip-no-mode", "clip", [], "--run_mode", category="command line"),
    C("clip-bad-mode", "clip", ["--run_mode", "finetune"], "invalid choice", category="command line"),
    C("clip-predict-no-data", "clip", ["--run_mode", "predict"], "--predict_data"),
    C("clip-labels-with-train", "clip", ["--run_mode", "train", "--candidate_labels", "a,b"], "predict only"),
    C("clip-topk-zero", "clip", ["--run_mode", "predict", "--predict_data", "{asset:png}", "--top_k", "0"], "--top_k",
      category="huge/tiny number"),
    C("clip-train-dir-missing", "clip", ["--run_mode", "train", "--train_dataset_dir", "{ws}/nowhere"],
      "does not exist", category="missing file"),
    C("clip-eval-dir-is-file", "clip", ["--run_mode", "eval", "--eval_dataset_dir", "{asset:png}"],
      "is not a directory", category="path is a directory/file"),
    C("clip-checkpoint-missing", "clip", ["--run_mode", "eval", "--checkpoint", "{ws}/w.ckpt",
                                          "--set", "output_dir={ws}/out"], "does not exist", category="missing file"),
    C("clip-config-binary", "clip", ["--run_mode", "eval", "--config", "{asset:binary}"], "",
      category="empty/binary file"),
    C("clip-predict-image-text", "clip", ["--run_mode", "predict", "--predict_data", "{asset:text}",
                                          "--checkpoint", "{asset:ckpt}"], "cannot be read", category="wrong file"),
]

BENCH = ["--checkpoint", "{asset:ckpt}", "--output", "{ws}/out"]
BENCHMARK_CASES = [
    C("benchmark-checkpoint-missing", "benchmark", ["--checkpoint", "{ws}/w.ckpt", "--dataset", "cifar100:{asset:cifar}",
                                                    "--output", "{ws}/out"],
      "--checkpoint '{ws}/w.ckpt' does not exist", category="missing file"),
    C("benchmark-dataset-type", "benchmark", BENCH + ["--dataset", "cifar10:{asset:cifar}"],
      "type 'cifar10' is not an evaluation dataset"),
    C("benchmark-dataset-missing", "benchmark", BENCH + ["--dataset", "imagenet:{ws}/imagenet"],
      "'{ws}/imagenet' does not exist", category="missing file"),
    C("benchmark-no-dataset", "benchmark", BENCH, "no dataset", category="command line"),
    C("benchmark-datasets-file-line", "benchmark", BENCH + ["--datasets-file", "{ws}/sets.txt"],
      "{ws}/sets.txt:2: 'imagenet': expected TYPE:PATH",
      {"sets.txt": "# sets\nimagenet\n"}),
    C("benchmark-output-is-file", "benchmark", ["--checkpoint", "{asset:ckpt}", "--dataset", "cifar100:{asset:cifar}",
                                                "--output", "{ws}/out"],
      "is a file", {"out": "x\n"}, category="path is a directory/file"),
]

LAUNCHER_CASES = [
    C("launcher-validate-missing", "launcher", ["validate", "{ws}/t.json"], "not found", category="missing file"),
    C("launcher-validate-empty", "launcher", ["validate", "{asset:empty}"], "", category="empty/binary file"),
    C("launcher-validate-binary", "launcher", ["validate", "{asset:binary}"], "", category="empty/binary file"),
    C("launcher-validate-config", "launcher", ["validate", "{ws}/c.yaml"], "", {"c.yaml": GOOD_CONFIG},
      category="wrong file"),
    C("launcher-merge-list", "launcher", ["merge", "{ws}/t.json", "-o", "{ws}/out.json"], "", {"t.json": "[1, 2]"},
      category="wrong file"),
    C("launcher-run-port", "launcher", ["run", "--master-port", "70000", "--", "python", "-c", "0"],
      "at most 65535"),
    C("launcher-ranktable-output-dir", "launcher", ["ranktable", "--output", "{ws}"], "is a directory",
      category="path is a directory/file"),
    C("launcher-doctor-nproc-newline", "launcher", ["doctor", "--nproc", "2\n"], "invalid int value",
      category="command line"),
]

MIX = ["--alpha", "0.5", "{ws}/out.ckpt"]
WISEFT_CASES = [
    C("wiseft-no-args", "wiseft", [], "required", category="command line"),
    C("wiseft-both-modes", "wiseft", ["{asset:ckpt}", "{asset:ckpt}", "--alpha", "0.5", "--alphas", "0,1"],
      "not allowed with", category="command line"),
    C("wiseft-zeroshot-missing", "wiseft", ["{ws}/nope.ckpt", "{asset:ckpt}"] + MIX, "ZEROSHOT", category="missing file"),
    C("wiseft-finetuned-foreign", "wiseft", ["{asset:ckpt}", "{asset:foreign_ckpt}"] + MIX,
      "FINETUNED '{asset:foreign_ckpt}'", category="wrong file"),
    C("wiseft-finetuned-png", "wiseft", ["{asset:ckpt}", "{asset:png}"] + MIX, "not a readable MindSpore checkpoint",
      category="wrong file"),
    C("wiseft-nonsquare", "wiseft", ["{asset:ckpt}", "{asset:nonsquare_pos}"] + MIX, "square number",
      category="shapes"),
    C("wiseft-alpha-range", "wiseft", ["{asset:ckpt}", "{asset:ckpt}", "--alpha", "1.5", "{ws}/out.ckpt"],
      "--alpha: 1.5 must be at most 1"),
    C("wiseft-alpha-nan", "wiseft", ["{asset:ckpt}", "{asset:ckpt}", "--alpha", "nan", "{ws}/out.ckpt"],
      "--alpha: invalid float value: 'nan'", category="huge/tiny number"),
    C("wiseft-alpha-no-out", "wiseft", ["{asset:ckpt}", "{asset:ckpt}", "--alpha", "0.5"], "give OUT.ckpt"),
    C("wiseft-out-directory", "wiseft", ["{asset:ckpt}", "{asset:ckpt}", "--alpha", "0.5", "{ws}"], "is a directory",
      category="path is a directory/file"),
    C("wiseft-alphas-text", "wiseft", ["{asset:ckpt}", "{asset:ckpt}", "--alphas", "0,half", "--eval", "{ws}/c.yaml"],
      "'half' is not a number", {"c.yaml": GOOD_CONFIG}),
    C("wiseft-alphas-no-eval", "wiseft", ["{asset:ckpt}", "{asset:ckpt}", "--alphas", "0,1"], "give --eval CONFIG"),
    C("wiseft-eval-config-missing", "wiseft", ["{asset:ckpt}", "{asset:ckpt}", "--alphas", "0,1", "--eval",
                                               "{ws}/nope.yaml"], "does not exist", category="missing file"),
]
CASES = (CONFIG_CASES + TRAIN_CASES + EVAL_CASES + PREDICT_CASES + CONVERT_CASES + CLIP_CASES + LAUNCHER_CASES
         + WISEFT_CASES + BENCHMARK_CASES)


# ---------------------------------------------------------------- running a case

def fill(text: str, ws: Path, assets: dict) -> str:
    out = text.replace("{ws}", str(ws))
    while "{asset:" in out:
        start = out.index("{asset:")
        end = out.index("}", start)
        out = out[:start] + str(assets[out[start + 7:end]]) + out[end + 1:]
    return out


def prepare(case: Case, ws: Path, assets: dict) -> None:
    for rel, content in case.files.items():
        if callable(content):
            content(ws, assets)
            continue
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        content = fill(content, ws, assets) if isinstance(content, str) else content
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def tree_digest(root: Path) -> dict:
    """Every entry under root: kind, mode and content hash (files) -- what 'nothing changed' compares."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            out[str(path.relative_to(root))] = (st.st_mode, digest)
    return out


def run_main(command: str, argv: list, capsys) -> tuple[int, str, str]:
    main = importlib.import_module(COMMANDS[command]).main
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, assets, tmp_path, capfd, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    prepare(case, ws, assets)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("CLIP_MODEL_DIR", str(ws / "models"))
    before = tree_digest(ws)
    code, out, err = run_main(case.command, [fill(a, ws, assets) for a in case.argv], capfd)
    lines = err.strip().splitlines()
    assert code == case.code, (code, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fill(case.expect, ws, assets) in lines[0], lines[0]
    assert tree_digest(ws) == before


def test_catalogue_covers_every_command_and_category():
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)
    assert {c.command for c in CASES} == set(COMMANDS)
    categories = {c.category for c in CASES}
    for needed in ("wrong file", "file from another version", "empty/binary file", "huge/tiny number",
                   "path is a directory/file", "hostile file", "nesting", "templates", "CIFAR types", "shapes",
                   "command line", "earlier run", "missing file"):
        assert needed in categories


# ---------------------------------------------------------------- a few as real processes

SUBPROCESS_CASES = ["config-bad-flag", "config-output-invalid-utf8", "predict-image-truncated", "convert-stride0-terabytes", "eval-json-is-directory"]


@pytest.mark.processes
@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_as_a_process(case_id, assets, tmp_path):
    """The in-process runs above are faithful: the real entry point gives the same exit code and line."""
    case = next(c for c in CASES if c.id == case_id)
    ws = tmp_path / "ws"
    ws.mkdir()
    prepare(case, ws, assets)
    before = tree_digest(ws)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", COMMANDS[case.command].replace(".__main__", "")]
                          + [fill(a, ws, assets) for a in case.argv],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=180)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == case.code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert fill(case.expect, ws, assets) in lines[0]
    assert tree_digest(ws) == before


def test_an_attempt_of_the_same_job_may_start_again(tmp_path):
    """A launcher restart (train.resume: auto, no checkpoint yet, this very config.yaml) is not an earlier run;
    another config in that directory is, and so is resume: none."""
    from clip.config import dump_yaml, load_config
    from clip.train.preflight import check_train
    from launcher.errors import UserError

    out = tmp_path / "out"
    cfg = load_config(None, ["data.train.num_samples=8", "data.eval=null", f"output_dir={out}"])
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (out / "config.yaml").write_text(dump_yaml(cfg))
    check_train(cfg, None)
    other = load_config(None, ["data.train.num_samples=8", "data.eval=null", f"output_dir={out}", "train.lr=0.1"])
    with pytest.raises(UserError, match="holds an earlier run"):
        check_train(other, None)
    fresh = load_config(None, ["data.train.num_samples=8", "data.eval=null", f"output_dir={out}", "train.resume=none"])
    with pytest.raises(UserError, match="holds an earlier run"):
        check_train(fresh, None)


def test_a_metrics_line_cut_by_a_crash_is_dropped_and_any_other_is_refused(tmp_path):
    from clip.train import runlog
    from launcher.errors import UserError

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert runlog.read(str(path)) == [{"step": 1, "loss": 2.0}]
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2 is not a metrics record"):
        runlog.read(str(path))
