"""The typed run configuration: YAML file + `--set key=value` overrides, validated once, before any work.

Pure Python (no MindSpore) so that launcher scripts can ask it for `output_dir` in a fraction of a second:
    python -m clip.config --config FILE [--set key=value ...] [--get KEY]
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

from clip.data import EVAL_TYPES, TRAIN_TYPES, DatasetConfig
from clip.loss.modes import LOSS_MODES, LOSS_TYPES, SIGLIP_MODES
from clip.model.architectures import DTYPES as MODEL_DTYPES
from clip.schema import SEED_MAX, check, machine_memory, setting, shown
from launcher.errors import ArgumentParser, UserError, exit_on_user_error, path, text

TRAIN_MODES = ("graph", "pynative")
OPTIMIZERS = ("adamw", "adamweightdecay")
LR_SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "fp16", "bf16")
ACCUM_MODES = ("contrastive", "plain")


@dataclass
class ModelConfig:
    name: Optional[str] = None            # model name (clip.list_models()) or open_clip JSON config path; null =
                                          # the architecture model.checkpoint carries, else clip_tiny
    checkpoint: Optional[str] = setting(None, path="maybe_file")  # MindSpore .ckpt with OpenAI parameter names to start from
    # take the checkpoint's moving averages (ema.*, written by a run with train.ema_decay) instead of its raw weights
    ema_weights: bool = False
    # SigLIP's vocabulary: a tokenizer.json or SentencePiece .model, or a directory with one (docs/models.md
    # "Tokenizers"); null for OpenAI's built-in BPE
    tokenizer: Optional[str] = setting(None, path="input")
    # null = the model's; another size resizes the position embeddings
    image_size: Optional[int] = setting(None, ge=1, le=65536, le_why="pixels a side")
    # compute dtype for evaluation/prediction; training uses train.precision
    dtype: str = setting("float32", choices=tuple(MODEL_DTYPES))
    # recompute residual blocks in the backward pass: true = all, N = first N per tower
    recompute: Union[bool, int] = setting(False, ge=0)
    lock_image: bool = False              # LiT: freeze the image tower (no gradient, optimiser state or all-reduce)
    # with lock_image: the last N of open_clip's layer groups stay trainable (docs/training.md)
    lock_image_unlocked_groups: int = setting(0, ge=0)
    lock_text: bool = False               # freeze the text tower
    # with lock_text: the last N of open_clip's text layer groups stay trainable
    lock_text_unlocked_layers: int = setting(0, ge=0)
    # training drops this share of each image's patch tokens (FLIP); 0 = off
    patch_dropout: float = setting(0.0, ge=0, lt=1, hint="(the share of patch tokens dropped in training)")


@dataclass
class DataConfig:
    train: DatasetConfig = field(default_factory=lambda: DatasetConfig(type="shapes", split="train"))
    eval: Optional[DatasetConfig] = field(
        default_factory=lambda: DatasetConfig(type="shapes", split="val", num_samples=480))
    retrieval: Optional[DatasetConfig] = None  # captioned set for `python -m clip.eval --task retrieval`


@dataclass
class TrainConfig:
    # per card and micro-batch; the global batch is world_size * batch_size * accum_steps
    batch_size: int = setting(32, ge=1)
    accum_steps: int = setting(1, ge=1)  # micro-batches per step, one contrastive loss over all of them
    # contrastive | plain (K separate losses: the wrong objective, a baseline)
    accum_mode: str = setting("contrastive", choices=ACCUM_MODES)
    epochs: int = setting(1, ge=1)  # used when max_steps is not set
    max_steps: Optional[int] = setting(None, ge=1)  # total optimiser steps; overrides epochs when set
    # end this invocation at this step (wall-time limits); the schedule still spans the whole run and
    # `resume: auto` continues it later
    stop_after: Optional[int] = setting(None, ge=1)
    # adamw (torch semantics) | adamweightdecay (MindSpore's, no bias correction)
    optimizer: str = setting("adamw", choices=OPTIMIZERS)
    lr: float = setting(5e-4, gt=0)  # peak learning rate
    lr_schedule: str = setting("cosine", choices=LR_SCHEDULES)  # cosine | linear | constant, after the warm-up
    min_lr: float = setting(0.0, ge=0)  # end of the cosine / linear decay
    warmup_steps: int = setting(0, ge=0)  # linear warm-up, then the schedule
    weight_decay: float = setting(0.2, ge=0)  # decoupled; not applied to gains, biases, logit_scale
    beta1: float = setting(0.9, ge=0, lt=1)
    beta2: float = setting(0.98, ge=0, lt=1)
    eps: float = setting(1e-6, gt=0)
    lr_image: Optional[float] = setting(None, gt=0)  # peak lr of the image tower; null = train.lr
    lr_text: Optional[float] = setting(None, gt=0)  # peak lr of the text tower; null = train.lr
    # layer-wise lr decay over the residual blocks (BEiT); 1 = off
    layer_decay: float = setting(1.0, gt=0, le=1, hint="(1 = off)")
    ema_decay: float = setting(0.0, ge=0, lt=1, hint="(0 = off)")  # EMA of the weights after each optimiser step
    # clip the global gradient L2 norm to this (torch clip_grad_norm_); 0 = off
    grad_clip_norm: float = setting(0.0, ge=0, hint="(0 = off)")
    precision: str = setting("fp32", choices=PRECISIONS)  # fp32 | fp16 (dynamic loss scaling) | bf16 (Ascend/GPU)
    loss_scale_init: float = setting(65536.0, ge=1)  # fp16: initial dynamic loss scale
    max_skipped_steps: int = setting(50, ge=0)  # fp16: more overflowing steps in a row than this ends the run
    resume_reset_scaler: bool = False     # allow resuming under another precision (fresh loss scaler)
    # weights, data order and caption choice
    seed: int = setting(0, ge=0, le=SEED_MAX, le_why="the seeds MindSpore accepts")
    save_every: int = setting(0, ge=0)  # steps between checkpoints; 0 = only at the end
    keep_last: int = setting(3, ge=1)  # step checkpoints kept besides last.ckpt
    eval_every: int = setting(0, ge=0)  # steps between zero-shot evaluations; 0 = only at the end
    eval_batch_size: int = setting(64, ge=1)
    log_every: int = setting(1, ge=1)  # steps between metrics lines
    resume: str = setting("auto", path="maybe_file", special=("auto", "none"))  # auto | none | path to a .ckpt
    overwrite: bool = False               # a fresh run may replace an earlier run's files in output_dir
    mode: str = setting("graph", choices=TRAIN_MODES)  # graph (compiled step) | pynative (debugging)
    num_workers: int = setting(1, ge=0, cores=True)  # data-loading worker processes per card
    tensorboard: bool = True              # TensorBoard event files under output_dir/tensorboard (rank 0)


@dataclass
class LossConfig:
    # local | full | local_only (the MindFormers baseline; wrong on >1 card)
    mode: str = setting("local", choices=LOSS_MODES)
    # clip (softmax) | siglip (sigmoid, learnable logit bias; docs/loss.md)
    type: str = setting("clip", choices=tuple(LOSS_TYPES))


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    output_dir: str = setting("runs/default", nonempty=True, path="output_dir")


# ---------------------------------------------------------------- building from plain data (pure)

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def all_keys(cls=RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key the config accepts, nested dataclasses expanded (for suggestions and docs)."""
    keys = []
    for name, tp in _hints(cls).items():
        key = prefix + name
        inner = _dataclass_of(tp)
        keys.append(key)
        if inner is not None:
            keys.extend(all_keys(inner, key + "."))
    return keys


def _dataclass_of(tp) -> Optional[type]:
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (list, dict):
        return {list: "a list", dict: "a mapping"}[origin]
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, "a mapping" if dataclasses.is_dataclass(tp) else str(tp))


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:  # a misspelt last part under the right section is the common case
        head, _, last = key.rpartition(".")
        siblings = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == head}
        close = [siblings[m] for m in difflib.get_close_matches(last, list(siblings), n=1, cutoff=0.5)]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"


class KeyedError(ValueError):
    """A config mistake whose message already names the dotted key."""


def coerce(value: Any, tp, key: str, base: Any = None) -> Any:
    """`value` as type `tp`; nested mappings are merged onto `base` (the default) so partial sections work."""
    try:
        return _convert(value, tp, key, base)
    except KeyedError:
        raise
    except ValueError as exc:
        raise KeyedError(f"{key}: {exc}") from None


def _convert(value: Any, tp, key: str, base: Any) -> Any:
    """coerce() for this level: plain ValueError for a mismatch here, KeyedError from nested values."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key, base)
            except KeyedError:
                raise
            except ValueError:
                continue
        raise ValueError(f"expected {_type_name(tp)}, got {shown(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {shown(value)}")
        return build(tp, value, key + ".", base)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"expected an integer, got {shown(value)}")
    if tp is float:
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1024:
            raise ValueError(f"{shown(value)} is beyond any floating-point number")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
        raise ValueError(f"expected a number, got {shown(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {shown(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {shown(value)}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {shown(value)}")
        return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"config field {key} has unsupported type {tp}")


def build(cls, data: dict, prefix: str = "", base: Any = None):
    """Dataclass `cls` from a nested dict merged onto `base` (default: cls()); KeyedError names the key."""
    base = cls() if base is None else base
    hints = _hints(cls)
    changes = {}
    for name, value in data.items():
        key = prefix + str(name)
        if name not in hints:
            raise KeyedError(_unknown_key(key, all_keys(RunConfig)))
        changes[name] = coerce(value, hints[name], key, getattr(base, name))
    return dataclasses.replace(base, **changes)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


MAX_NESTING = 64  # run configs nest 3 levels; YAML parsing of deep flow nesting is quadratic, then recursive


def flow_depth(text: str) -> int:
    """The deepest nesting of [ and { in a YAML text (quotes ignored: only an upper bound is needed)."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return deepest


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, but a key given twice in one mapping is an error: PyYAML keeps the last silently, which
    drops a whole section when `train:` appears twice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_yaml(text: str):
    """yaml.safe_load, refusing nesting no run config has before the parser spends time or stack on it, and
    duplicate keys. Python refuses integers of more than 4300 digits with a ValueError, which passes through."""
    if flow_depth(text) > MAX_NESTING:
        raise RecursionError
    return yaml.load(text, Loader=_UniqueKeyLoader)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as YAML so lists and null work."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {shown(text)}: expected key=value")
    try:
        value = safe_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except ValueError:  # an integer beyond Python's digit limit
        raise UserError(f"--set {shown(key.strip())}: the value has more digits than Python reads "
                        "(4300 by default)") from None
    except RecursionError:
        raise UserError(f"--set {shown(text)}: value nested too deeply") from None
    return key.strip(), value


def apply_override(data: dict, key: str, value: Any) -> None:
    """Set dotted `key` in the nested dict `data`, creating sections on the way."""
    if key not in all_keys(RunConfig):
        raise ValueError(_unknown_key(key, all_keys(RunConfig)))
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def validate(cfg: RunConfig) -> list[tuple[str, str]]:
    """Problems as (key, message) pairs: every field against what it declares (clip.schema), then the checks
    that relate fields; types were already checked while building."""
    from clip.model.architectures import get_config  # pure dataclasses, no MindSpore

    roles = [(f"data.{section}.type", f"{dataset.type!r} is not {what}, expected one of {', '.join(types)}")
             for section, types, what in (("train", TRAIN_TYPES, "a training dataset"),
                                          ("eval", EVAL_TYPES, "an evaluation dataset"),
                                          ("retrieval", TRAIN_TYPES, "a captioned dataset"))
             for dataset in [getattr(cfg.data, section)] if dataset is not None and dataset.type not in types]
    t, problems = cfg.train, roles + check(cfg)
    if problems:  # the relations below assume each field is in its own range
        return problems

    def need(ok, key, msg):
        if not ok:
            problems.append((key, msg))

    architecture = None
    if cfg.model.name is not None:
        try:
            architecture = get_config(cfg.model.name)
        except UserError as exc:
            problems.append(("model.name", str(exc)))
    need(cfg.model.image_size is None or (cfg.model.image_size >= 1 and (architecture is None or
         cfg.model.image_size % architecture.patch_size == 0)), "model.image_size",
         f"{cfg.model.image_size} must be a positive multiple of the model's patch size"
         + (f" ({architecture.patch_size})" if architecture else ""))
    need(cfg.model.checkpoint is None or os.path.isfile(cfg.model.checkpoint), "model.checkpoint",
         f"file {cfg.model.checkpoint!r} does not exist")
    if architecture is not None:  # else the checkpoint's architecture decides, checked when the model is built
        from clip.model.hf_tokenizer import for_model

        try:
            for_model(architecture, cfg.model.tokenizer, "model.tokenizer")
        except UserError as exc:
            problems.append(("model.tokenizer", str(exc).removeprefix("model.tokenizer: ")))
    need(0 <= t.min_lr <= t.lr, "train.min_lr", f"{t.min_lr} must be between 0 and train.lr ({t.lr})")
    grouped = [k for k, on in (("train.lr_image", t.lr_image is not None), ("train.lr_text", t.lr_text is not None),
                               ("train.layer_decay", t.layer_decay != 1)) if on]
    need(not grouped or t.optimizer == "adamw", grouped[0] if grouped else "train.optimizer",
         f"needs train.optimizer: adamw (per-parameter learning rates), not {t.optimizer!r}")
    m = cfg.model
    for key, locked, tower, layers in (
            ("lock_image_unlocked_groups", m.lock_image, "vision", architecture and architecture.vision_layers),
            ("lock_text_unlocked_layers", m.lock_text, "text", architecture and architecture.text_layers)):
        n = getattr(m, key)
        lock_key = "lock_image" if tower == "vision" else "lock_text"
        need(n == 0 or locked, f"model.{key}", f"{n} has no effect without model.{lock_key}: true")
        if layers:  # open_clip's groups: the embeddings, each block, the last block + final norm, the projection
            need(n <= layers + 2, f"model.{key}",
                 f"{n} groups: {m.name}'s {tower} tower has {layers + 2} ({layers} blocks + 2), expected 0..{layers + 2}")
    recompute = cfg.model.recompute
    if not isinstance(recompute, bool) and architecture is not None:
        preset = architecture
        most = max(preset.vision_layers, preset.text_layers)
        need(0 <= recompute <= most, "model.recompute",
             f"{recompute} blocks: {cfg.model.name} has {preset.vision_layers} vision and {preset.text_layers} text "
             f"blocks; expected true, false or 0..{most} (blocks per tower)")
    need(cfg.loss.type != "siglip" or cfg.loss.mode in SIGLIP_MODES, "loss.mode",
         f"{cfg.loss.mode!r} is not one of {', '.join(SIGLIP_MODES)} (the modes of loss.type siglip)")
    need(t.resume in ("auto", "none") or os.path.isfile(t.resume), "train.resume",
         f"{t.resume!r} is neither auto, none nor an existing checkpoint file")
    side = cfg.model.image_size or (architecture or get_config("clip_tiny")).image_size
    for key in ("batch_size", "eval_batch_size"):  # one batch of float32 pixels, a lower bound of what it needs
        need_bytes, have = getattr(t, key) * 3 * side * side * 4, machine_memory()
        need(need_bytes <= have, f"train.{key}", f"{getattr(t, key)} images of {side} px take "
             f"{need_bytes / 2**30:.1f} GiB as float32 pixels alone, more than this machine's {have / 2**30:.1f} GiB")
    return problems


# ---------------------------------------------------------------- I/O edges

def load_config(path: Optional[str], overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read, override, build and validate; every mistake is a one-line UserError naming file and key."""
    where = path or "config"
    data: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = safe_yaml(f.read()) or {}
        except FileNotFoundError:
            raise UserError(f"config file {path!r} does not exist") from None
        except IsADirectoryError:
            raise UserError(f"config file {path!r} is a directory, expected a YAML file") from None
        except RecursionError:
            raise UserError(f"{path}: nested too deeply for a run config") from None
        except ValueError:  # an integer beyond Python's digit limit (yaml.YAMLError is not a ValueError)
            raise UserError(f"{path}: a number has more digits than Python reads "
                            "(4300 by default)") from None
        except (UnicodeDecodeError, PermissionError) as exc:
            raise UserError(f"config file {path!r} cannot be read ({exc.__class__.__name__})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise UserError(f"{path}:{line}: {problem}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of config keys at the top level")
    for text in overrides:
        key, value = parse_override(text)
        try:
            apply_override(data, key, value)
        except ValueError as exc:
            raise UserError(f"--set {text}: {exc}") from None
    try:
        cfg = build(RunConfig, data)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}{_from_override(str(exc), overrides)}") from None
    problems = validate(cfg)
    if problems:
        key, msg = problems[0]
        raise UserError(f"{where}: {key}: {msg}{_from_override(key, overrides)}")
    return cfg


def _from_override(text: str, overrides) -> str:
    for o in overrides:  # the override's whole key: model.lock_image is not model.lock_image_unlocked_groups
        key = parse_override(o)[0]
        if text.startswith(key) and not text[len(key):len(key) + 1].replace("_", "a").isalnum():
            return f" (from --set {o})"
    return ""


def get_key(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or part not in _hints(type(node)):
            raise UserError(_unknown_key(key, all_keys(RunConfig)))
        node = getattr(node, part)
    return node


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def write_resolved(cfg: RunConfig, path: str) -> None:
    """The config the run actually used, written atomically."""
    from launcher.safe_write import write_text

    write_text(path, dump_yaml(cfg))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=path("file"), help="YAML run config (defaults are used for missing keys)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clip.config",
                            description="Validate a run config and print it or one key of it.")
    add_config_arguments(parser)
    parser.add_argument("--get", metavar="KEY", type=text(nonempty=True),
                        help="print only this key's value (e.g. output_dir)")
    return parser


@exit_on_user_error
def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.get:
        value = get_key(cfg, args.get)
        if dataclasses.is_dataclass(value):
            print(yaml.safe_dump(dataclasses.asdict(value), sort_keys=False), end="")
        else:
            print("null" if value is None else value)
    else:
        print(dump_yaml(cfg), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
