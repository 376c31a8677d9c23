"""Training runs for the tests that compare them: `clip.train` as one plain process or as a launcher cluster,
and the readers of what a run leaves behind (per-step losses and metrics, checkpoint parameters).

Shared by the equivalence, accumulation, precision, resume, data-format and compile-cache tests.
"""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from clusters import clean_environ

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-5
# The launcher's option that pins each rank to its own block of cores; the clusters the suite starts use it, since
# on 2 cores unpinned MindSpore ranks spend CPU in each other's way (docs/benchmarks.md, Test suite).
BIND = "--bind-cores"

# clip_tiny's widths with one block per tower (an open_clip model config): every property these runs check holds
# for any depth, and a train step with one block compiles in about two thirds of the time of clip_tiny's two
TINY_MODEL = REPO / "tests" / "models" / "tiny_1block.json"
TINY = [f"model.name={TINY_MODEL}", "data.train.type=shapes", "data.train.num_samples=24", "data.eval=null",
        "train.max_steps=5", "train.lr=1e-3", "train.warmup_steps=2", "train.weight_decay=0.1",
        "train.seed=7", "train.num_workers=1", "train.resume=none"]


def clean_env() -> dict:
    env = clean_environ()
    env["PYTHONUNBUFFERED"] = "1"
    env["GLOG_v"] = "3"  # MindSpore: errors only, keep worker logs readable
    return env


def train_command(overrides) -> list:
    cmd = [sys.executable, "-m", "clip.train"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


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


def run_training(out_dir: Path, world: int, overrides, timeout: float = 300) -> subprocess.CompletedProcess:
    """clip.train on `world` workers (launcher, cluster backend) or as one plain process for world 1."""
    cmd = train_command(list(overrides) + [f"output_dir={out_dir}"])
    if world > 1:  # ranks pinned to their own cores (BIND): the suite's CPU goes further (docs/benchmarks.md)
        cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(world), BIND,
               "--log-dir", str(out_dir / "logs"), "--no-chdir", "--tee", "0", "--"] + cmd
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        logs = "".join(f"\n--- {p}\n{p.read_text()[-3000:]}" for p in sorted((out_dir / "logs").glob("*.log"))
                       ) if (out_dir / "logs").is_dir() else ""
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                             f"{logs}")
    return proc


def start_training(out_dir: Path, overrides) -> subprocess.Popen:
    """clip.train as one plain process, not waited for (finish_training does). Single-process runs share no
    port, and much of a short run is single-threaded start-up and compilation, so two cores finish several
    side by side sooner (measured: two tiny K = 4 runs took 25 s one after the other, 16 s together)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out_dir}.stdout", "w") as stdout, open(f"{out_dir}.stderr", "w") as stderr:
        return subprocess.Popen(train_command(list(overrides) + [f"output_dir={out_dir}"]), cwd=REPO, env=clean_env(),
                                stdout=stdout, stderr=stderr, text=True)


def finish_training(out_dir: Path, proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout, stderr = Path(f"{out_dir}.stdout").read_text(), Path(f"{out_dir}.stderr").read_text()
    if proc.returncode != 0:
        raise AssertionError(f"training in {out_dir} failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_trainings(jobs: dict) -> dict:
    """Several single-process trainings ({out_dir: overrides}) side by side; out_dir -> CompletedProcess."""
    started = {out: start_training(out, overrides) for out, overrides in jobs.items()}
    try:
        return {out: finish_training(out, proc) for out, proc in started.items()}
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()


def losses(out_dir: Path) -> dict:
    """step -> global loss from metrics.jsonl (each step exactly once)."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    steps = [r["step"] for r in train_rows]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in train_rows}


def metric(out_dir: Path, key: str) -> dict:
    """step -> `key` of the training lines of metrics.jsonl."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if "loss" in r}


def model_params(ckpt: Path) -> dict:
    """The model's parameters (OpenAI names) from a training checkpoint, as numpy: no optimiser state, run
    position or scaler state, and no text entry (precision, the architecture's JSON)."""
    from clip.train.checkpoint import META_KEYS
    from clip.train.precision import SCALER_STATE

    return {k: v for k, v in stored_arrays(ckpt).items()
            if not k.startswith(("adam_", "global_step")) and k not in META_KEYS + SCALER_STATE}


def stored_arrays(ckpt: Path) -> dict:
    """Every tensor of a checkpoint as numpy; the text entries (str values: precision, architecture) left out."""
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(ckpt)).items() if not isinstance(v, str)}


def function_part(name: str, value: np.ndarray) -> np.ndarray:
    """The part of a parameter that the model's output depends on. The key third of `attn.in_proj_bias`
    adds a constant to every score of a query row, which softmax ignores: its true gradient is exactly zero,
    so what reaches it is float rounding noise, and AdamW's bias-corrected update turns that noise into
    steps of up to lr that differ between world sizes (2.7e-5 after 5 steps here) without changing the model."""
    if name.endswith("attn.in_proj_bias"):
        width = value.shape[0] // 3
        return np.concatenate([value[:width], value[2 * width:]])
    return value


def max_param_diff(a: dict, b: dict) -> tuple:
    assert a.keys() == b.keys()
    return max((float(np.max(np.abs(function_part(k, a[k]) - function_part(k, b[k])))), k) for k in a)


# clip_tiny's shapes as an open_clip model-config with exact GELU (open_clip's default activation), for the
# runs that train from a converted open_clip checkpoint.
TINY_GELU = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "head_width": 32,
                                             "patch_size": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def converted_gelu_checkpoint(folder: Path) -> Path:
    """A checkpoint converted (clip.convert --model <JSON>) from a TINY_GELU model that open_clip builds with
    random weights; it carries its architecture, so runs name no model. Returns its path."""
    import torch

    import openclip_reference as ref
    from clip.model.convert import convert

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(ref.create(TINY_GELU, seed=11)), folder / "open_clip_pytorch_model.bin")
    (folder / "tiny_gelu.json").write_text(json.dumps(TINY_GELU))
    result = convert(str(folder / "open_clip_pytorch_model.bin"), str(folder / "tiny_gelu.ckpt"),
                     str(folder / "tiny_gelu.json"))
    assert result.config.activation == "gelu"
    return folder / "tiny_gelu.ckpt"


def from_checkpoint(overrides, ckpt: Path) -> list:
    """`overrides` training from `ckpt` (its architecture, no model name) instead of TINY_MODEL."""
    return [o for o in overrides if not o.startswith("model.name=")] + [f"model.checkpoint={ckpt}"]


def tensorboard_scalars(directory: Path) -> dict:
    """tag -> {step: value} from every TensorBoard event file in `directory`, read back as TensorBoard does:
    TFRecord framing (length, masked CRC32C of it, the Event, its masked CRC32C) with tensorboardX's protos;
    a later file's value for a step replaces an earlier one's."""
    import struct

    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    scalars: dict = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            header = data[at:at + 8]
            (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[at + 8:at + 12])
            body = data[at + 12:at + 12 + length]
            (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
            assert header_crc == masked_crc32c(header) and body_crc == masked_crc32c(body), f"{path}: bad CRC at {at}"
            at += 16 + length
            event = Event.FromString(body)
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars
