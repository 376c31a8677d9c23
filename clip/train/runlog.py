"""What a run reports: metrics.jsonl (one JSON object per line), progress on the console, a PNG of the curves,
TensorBoard event files.

Records are plain dicts: training lines carry step, loss (global), lr, logit_scale, grad_norm, samples_per_s
(and in fp16 loss_scale, skipped_steps);
evaluation lines carry step and eval_top1 / eval_top5.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Optional

from launcher.errors import UserError
from launcher.safe_write import reason, write_text, write_with

METRICS = "metrics.jsonl"
PLOT = "metrics.png"


def read(path: str) -> list[dict]:
    """The records of a metrics file. A last line cut short (a crash mid-write) is dropped; any other line
    that is not a JSON object is a UserError naming the file and line."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read metrics ({exc.__class__.__name__}: {exc})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            if number == len(lines):  # no newline after it: the write was interrupted
                continue
            record = None
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {number} is not a metrics record (a JSON object); "
                            f"repair or remove the file, or use another output_dir")
        records.append(record)
    return records


class MetricsLog:
    """Append-only metrics.jsonl; on resume the lines after the checkpoint's step are dropped first, so a
    resumed run's file reads like an uninterrupted one."""

    def __init__(self, output_dir: str, resume_step: Optional[int]):
        self.path = os.path.join(output_dir, METRICS)
        os.makedirs(output_dir, exist_ok=True)
        kept = [r for r in read(self.path) if resume_step is not None and r.get("step", 0) <= resume_step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as exc:
            raise UserError(f"cannot write {self.path}: {reason(exc)}") from None

    def close(self) -> None:
        self._file.close()


# TensorBoard tags: a record's keys other than these, by section
_NOT_SCALARS = ("step", "eval_n", "eval_classes")
TENSORBOARD = "tensorboard"


def tensorboard_tag(key: str) -> str:
    """`eval/top1`, `eval/ema_top1` for evaluation keys, `train/loss` and friends for the rest."""
    if key.startswith("eval_") or "_eval_" in key:
        return "eval/" + key.replace("eval_", "", 1)
    return "train/" + key


def lr_groups(scales: dict) -> dict:
    """Parameter name -> learning-rate multiple, as the groups TensorBoard shows: per tower part (`image.embed`,
    `image.block3`, `image.head`, `text.*`, `other`), each at its first parameter's multiple; a part whose
    parameters step at several multiples gets one group per multiple. Empty when every parameter steps at
    train.lr: the schedule's `train/lr` says it all then."""
    if len(set(scales.values())) <= 1:
        return {}
    groups: dict = {}
    for name, scale in scales.items():
        tower = "image" if name.startswith("visual.") else "other" if name.startswith("logit_") else "text"
        block = re.search(r"resblocks\.(\d+)\.", name)
        head = (name.rsplit(".", 1)[0].endswith(("ln_post", "ln_final")) or name.startswith("visual.attn_pool.")
                or name in ("visual.proj", "text_projection", "text_projection_bias"))
        part = tower if tower == "other" else f"{tower}.{f'block{block.group(1)}' if block else 'head' if head else 'embed'}"
        taken = {v: k for k, v in groups.items() if k == part or k.startswith(part + "@")}
        if scale not in taken:
            groups[part if not taken else f"{part}@{len(taken)}"] = scale
    return groups


def _summary_writer_class():
    """tensorboardX imports torch, when it is installed, only to recognise torch tensors; we log Python floats,
    and that import costs each run seconds of start-up, so torch is hidden from it unless already loaded."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects without torch
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class TensorBoard:
    """TensorBoard event files under output_dir/tensorboard (tensorboardX), from the same records as
    metrics.jsonl: every number in them, the learning rate of each group, and what `extra` adds (the logit
    bias). A resumed run purges the events after its checkpoint's step, as MetricsLog drops those lines."""

    def __init__(self, output_dir: str, resume_step: Optional[int], groups: Optional[dict] = None):
        SummaryWriter = _summary_writer_class()
        self.directory = os.path.join(output_dir, TENSORBOARD)
        self.groups = groups or {}
        self.writer = SummaryWriter(self.directory, purge_step=None if resume_step is None else resume_step + 1,
                                    flush_secs=10)

    def write(self, record: dict, extra: Optional[dict] = None) -> None:
        step = record["step"]
        try:
            for key, value in {**record, **(extra or {})}.items():
                if key not in _NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(tensorboard_tag(key), value, step)
            if "lr" in record:
                for group, scale in self.groups.items():
                    self.writer.add_scalar(f"train/lr/{group}", record["lr"] * scale, step)
        except OSError as exc:
            raise UserError(f"cannot write {self.directory}: {reason(exc)}") from None

    def close(self) -> None:
        self.writer.close()


def format_line(record: dict, total_steps: int) -> str:
    """One human-readable line for a training or evaluation record."""
    if "eval_top1" in record:
        ema = (f"; EMA weights top-1 {record['ema_eval_top1']:.2f}% top-5 {record['ema_eval_top5']:.2f}%"
               if "ema_eval_top1" in record else "")
        return (f"eval step {record['step']}/{total_steps}: zero-shot top-1 {record['eval_top1']:.2f}% "
                f"top-5 {record['eval_top5']:.2f}% ({record['eval_n']} images, {record['eval_classes']} classes)"
                f"{ema}")
    extra = "".join(f" {key} {record[key]:.3g}" for key in ("grad_norm", "loss_scale", "skipped_steps")
                    if key in record)
    return (f"step {record['step']}/{total_steps} loss {record['loss']:.4f} lr {record['lr']:.3g} "
            f"logit_scale {record['logit_scale']:.3f}{extra} {record['samples_per_s']:.1f} samples/s")


class Progress:
    """A tqdm bar on a terminal, plain lines otherwise (log files stay readable); silent off rank 0."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool, stream=None):
        self.total = total_steps
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream, dynamic_ncols=True)

    def step(self, record: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(record["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        else:
            print(format_line(record, self.total), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot(records: list[dict], path: str) -> None:
    """Loss (left axis) and zero-shot top-1 (right axis) against step, as a PNG written atomically. A bare Figure
    on the Agg canvas: pyplot's import and figure manager would cost every run's end more than the drawing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in records if "loss" in r and math.isfinite(r["loss"])]
    evals = [r for r in records if "eval_top1" in r]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="loss (global)")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss", color="tab:blue")
    if evals:
        acc = ax.twinx()
        acc.plot([r["step"] for r in evals], [r["eval_top1"] for r in evals], "o-", color="tab:orange",
                 label="zero-shot top-1")
        ema = [r for r in evals if "ema_eval_top1" in r]
        if ema:
            acc.plot([r["step"] for r in ema], [r["ema_eval_top1"] for r in ema], "s--", color="tab:green",
                     label="zero-shot top-1, EMA weights")
        acc.set_ylabel("zero-shot top-1 (%)", color="tab:orange")
        acc.set_ylim(0, 100)
    ax.set_title("training")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
