"""The application layer behind every front door (`Trainer`, `python -m clip`, `python -m clip.eval`,
`python -m clip.predict`): which weights to use, the model, evaluation and its result file, prediction,
and the mapping of MindFormers-style arguments (dataset directories, dicts of overrides) onto the typed config.

Front doors parse their arguments and call these functions; none resolves weights or writes results itself.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from clip.config import RunConfig, all_keys, build, load_config, validate
from clip.data.base import DatasetConfig
from launcher.errors import UserError

log = logging.getLogger(__name__)

MULTI_CARD_HINT = ("the Trainer runs one card in this process and never starts a cluster; for several cards use "
                   "bash scripts/run_distribute.sh N CONFIG")
TASKS = ("zeroshot", "retrieval", "linear_probe")
RESULT_FILES = {"zeroshot": "eval.json", "retrieval": "retrieval.json", "linear_probe": "linear_probe.json"}


def configure_logging() -> None:
    """The one logging set-up of the command-line tools: INFO and above on stderr, timestamped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)


# ---------------------------------------------------------------- configs and datasets

def config_from(config: Any) -> RunConfig:
    """A validated RunConfig from None (defaults), a YAML path, a RunConfig, or a dict of overrides (nested
    sections or dotted keys, e.g. {"train": {"lr": 1e-3}, "train.max_steps": 10})."""
    if config is None or isinstance(config, (str, os.PathLike)):
        return load_config(None if config is None else os.fspath(config))
    if isinstance(config, RunConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = config_from_mapping(config)
    else:
        raise UserError(f"config: got {type(config).__name__}, expected a YAML path, a RunConfig or a dict")
    problems = validate(cfg)
    if problems:
        key, msg = problems[0]
        raise UserError(f"config: {key}: {msg}")
    return cfg


def config_from_mapping(overrides: Mapping) -> RunConfig:
    """Defaults overridden by a mapping, through the same typed builder as YAML files."""
    data: dict = {}
    for key, value in overrides.items():
        key = str(key)
        if key == "use_parallel":  # MindFormers' switch for multi-card runs
            if value:
                raise UserError(f"config: use_parallel={value!r}: {MULTI_CARD_HINT}")
            continue
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if key not in all_keys(RunConfig):
            data = merge(data, {key: value})  # build() names the unknown key and suggests the closest
            continue
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        data = merge(data, nested)
    try:
        return build(RunConfig, data)
    except ValueError as exc:
        raise UserError(f"config: {exc}") from None


def merge(base: dict, extra: dict) -> dict:
    """Nested dicts merged; values of `extra` win."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def is_cifar100(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cifar-100-python")) or os.path.isfile(os.path.join(path, "meta"))


def dataset_from_path(path, role: str, current: Optional[DatasetConfig], what: Optional[str] = None) -> DatasetConfig:
    """The data.train (role "train") or data.eval ("eval") entry for a dataset given by location.

    train: a directory is Flickr8k, a file is a CSV/TSV of image paths and captions.
    eval: a directory holding CIFAR-100's python files is CIFAR-100 (test split), any other directory is an
    image folder (one sub-folder per class). Other settings of the current entry (templates, sha256...) stay.
    """
    path = os.fspath(path)
    what = f"{what or role + '_dataset'} {path!r}"
    if role == "train":
        if os.path.isdir(path):
            kind, split = "flickr8k", "train"
        elif os.path.isfile(path):
            kind, split = "csv", "train"
        else:
            raise UserError(f"{what} does not exist (expected a Flickr8k directory or a CSV/TSV file of image "
                            f"paths and captions)")
    else:
        if not os.path.isdir(path):
            raise UserError(f"{what} is not a directory (expected CIFAR-100 in python format or one folder per class)")
        kind, split = ("cifar100", "test") if is_cifar100(path) else ("imagefolder", "val")
    current = current or DatasetConfig()
    if current.type == kind:
        split = current.split
    return dataclasses.replace(current, type=kind, path=path, split=split)


def with_datasets(cfg: RunConfig, train_dataset=None, eval_dataset=None,
                  names: tuple[str, str] = ("train_dataset", "eval_dataset")) -> RunConfig:
    """cfg with data.train / data.eval replaced: a DatasetConfig as given, a path mapped by dataset_from_path.
    `names` are what the caller calls the two arguments, for error messages."""
    data = cfg.data
    for role, given, name in (("train", train_dataset, names[0]), ("eval", eval_dataset, names[1])):
        if given is None:
            continue
        if isinstance(given, DatasetConfig):
            entry = given
        elif isinstance(given, (str, os.PathLike)):
            entry = dataset_from_path(given, role, getattr(data, role), name)
        else:
            raise UserError(f"{name}: got {type(given).__name__}, expected a directory, a file or a "
                            f"DatasetConfig")
        data = dataclasses.replace(data, **{role: entry})
    cfg = dataclasses.replace(cfg, data=data)
    problems = validate(cfg)
    if problems:
        key, msg = problems[0]
        raise UserError(f"{key}: {msg}")
    return cfg


def with_model(cfg: RunConfig, name: Optional[str] = None, checkpoint: Optional[str] = None,
               dtype: Optional[str] = None) -> RunConfig:
    changes = {k: v for k, v in (("name", name), ("checkpoint", checkpoint), ("dtype", dtype)) if v is not None}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


# ---------------------------------------------------------------- weights and the model

def existing_file(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} {path!r} does not exist")
    return path


def weights_for(cfg: RunConfig, checkpoint: Optional[str] = None, what: str = "checkpoint",
                pretrained: bool = True) -> Optional[str]:
    """The one answer to "which weights": the given checkpoint, else model.checkpoint, else the preset's
    converted weights in the model directory (a UserError naming the file and the convert command if absent),
    or None (random weights) where the caller allows it with pretrained=False."""
    from clip.model import pretrained_checkpoint

    if checkpoint:
        return existing_file(checkpoint, what)
    if cfg.model.checkpoint:
        return cfg.model.checkpoint
    return pretrained_checkpoint(cfg.model.name) if pretrained else None


def preset_of_checkpoint(path: str) -> str:
    """The name of the architecture the checkpoint carries (older files: the one their shapes imply)."""
    from clip.model import model_name
    from clip.model.factory import resolve_config
    from clip.model.weights import read

    return model_name(resolve_config(None, read(path), path))


def save_weights(model, path: str) -> str:
    """A model's parameters (OpenAI names) as a MindSpore checkpoint, written atomically."""
    from clip.model import weights

    return weights.write(path, model, architecture=model.config)


def require_single_card(env: Mapping[str, str]) -> None:
    """Refuse to run inside a multi-worker launch: each worker would train alone on a copy of the job."""
    from clip.parallel.distributed import plan_from_env

    try:
        plan = plan_from_env(env)
    except UserError as exc:
        raise UserError(f"{exc}; {MULTI_CARD_HINT}") from None
    if plan.world_size > 1 or plan.role != "worker":
        raise UserError(f"this process is {plan.role} {plan.rank} of a {plan.world_size}-card {plan.startup} launch; "
                        f"{MULTI_CARD_HINT}")


# ---------------------------------------------------------------- evaluation

def effective_task(cfg, task: str) -> str:
    """The task a dataset calls for: a CLIP_benchmark set whose dataset_type.txt says retrieval, given as
    data.eval, is evaluated by retrieval (CLIP_benchmark names every set by one path whatever its task)."""
    from clip.data.clip_benchmark import kind_of

    if task == "zeroshot" and kind_of(cfg.data.eval) == "retrieval":
        return "retrieval"
    return task


def dataset_for(cfg, task: str):
    """The dataset config the task reads, or a UserError naming the missing config key."""
    from clip.data.clip_benchmark import kind_of

    data = cfg.data.retrieval if task == "retrieval" else cfg.data.eval
    key = "data.retrieval" if task == "retrieval" else "data.eval"
    if data is None and task == "retrieval" and kind_of(cfg.data.eval) == "retrieval":
        data = cfg.data.eval
    if data is None:
        raise UserError(f"{key} is not set; --task {task} needs a dataset there")
    return data


def load_source(task: str, data):
    """The task's source; for a linear probe the pair (train split, data's split), the train split being the
    same dataset with split `train`."""
    from clip.data import build_eval_source, build_train_source

    if task == "linear_probe":
        test = build_eval_source(data)
        if getattr(test, "multilabel", False):
            raise UserError(f"data.eval.path: {data.path!r} is a multilabel set; --task linear_probe needs one "
                            f"class per image")
        train = build_eval_source(dataclasses.replace(data, split="train"))
        if list(train.classnames) != list(test.classnames):
            raise UserError(f"data.eval.path: {data.path!r}: the train split's classes {train.classnames[:3]} are not "
                            f"those of split {data.split!r} {test.classnames[:3]} (a linear probe trains on split "
                            f"train of the same set)")
        return train, test
    return build_train_source(data) if task == "retrieval" else build_eval_source(data)


def run(cfg, task: str, checkpoint: Optional[str], sharded: bool, cache_dir: Optional[str] = None) -> Optional[dict]:
    """Evaluate and return the result on the rank that writes it (None on the others).

    Every rank reads the dataset first (no MindSpore needed), so that data mistakes fail fast everywhere."""
    data = dataset_for(cfg, task)
    if task == "retrieval" and data.split == "train":
        log.warning("data.retrieval.split is 'train'; retrieval results are usually reported on the test split")
    source = load_source(task, data)
    from clip.parallel import distributed

    info = distributed.init_from_env()
    sharded = sharded and info.world_size > 1
    if not sharded and info.rank != 0:
        # Nothing to wait for: a barrier here would fail once rank 0's evaluation outlasts the CPU collective
        # timeout (tens of seconds, MS_CPU_COMM_OP_TIMEOUT), and a worker that ends cleanly does not disturb
        # the others in a dynamic cluster.
        log.info("rank %d of %d: rank 0 evaluates (pass --sharded to share the work)", info.rank, info.world_size)
        return None
    result = evaluate(cfg, task, data, source, checkpoint, sharded, cache_dir)
    if result is None or info.rank != 0:
        return None
    result.update(world_size=info.world_size, sharded=sharded)
    return result


def evaluate(cfg, task: str, data, source, checkpoint: Optional[str], sharded: bool,
             cache_dir: Optional[str] = None) -> Optional[dict]:
    """Build the model from the config (and checkpoint) and evaluate it on the source (None on the ranks of a
    sharded linear probe other than 0, which fits alone). cache_dir keeps zero-shot classifiers (one process)."""
    from clip.model import create_model
    from clip.model.hf_tokenizer import attach

    started = time.time()
    checkpoint = weights_for(cfg, checkpoint, pretrained=False)
    if not checkpoint:
        log.warning("no checkpoint given (--checkpoint or model.checkpoint): evaluating random weights")
    model = create_model(cfg.model.name, checkpoint=checkpoint, dtype=cfg.model.dtype, image_size=cfg.model.image_size,
                         ema_weights=cfg.model.ema_weights)
    attach(model, cfg.model.tokenizer)
    model.set_train(False)
    image_size, batch_size = model.config.image_size, cfg.train.eval_batch_size
    if task == "zeroshot":
        from clip.eval.zeroshot import ClassifierCache, evaluate_source

        cache = None
        if cache_dir and checkpoint and not sharded:
            stat = os.stat(checkpoint)
            cache = ClassifierCache(cache_dir, (os.path.abspath(checkpoint), stat.st_size, stat.st_mtime_ns,
                                                model.config, cfg.model.dtype))
        result = evaluate_source(model, source, image_size, batch_size, sharded, cache)
    elif task == "linear_probe":
        from clip.eval.linear_probe import evaluate_probe

        result = evaluate_probe(model, source[0], source[1], image_size, batch_size, sharded)
        if result is None:
            return None
    else:
        from clip.eval.retrieval import evaluate_captions

        result = evaluate_captions(model, source, image_size, batch_size, data.recall_k, sharded)
    from clip.model import model_name

    result.update(task=task, model=cfg.model.name or model_name(model.config), checkpoint=checkpoint, dtype=cfg.model.dtype,
                  dataset={"type": data.type, "path": data.path, "split": data.split},
                  seconds=round(time.time() - started, 3))
    return result


def evaluate_and_write(cfg, task: str, checkpoint: Optional[str], sharded: bool = False,
                       weights_label: Optional[str] = None, cache_dir: Optional[str] = None) -> Optional[dict]:
    """Evaluate, then (on the rank that has the result) write <output_dir>/eval.json or retrieval.json and print
    the one-line summary: the only place evaluation results are written."""
    from clip.eval.results import benchmark_file
    from clip.train.preflight import check_output_file
    from launcher.safe_write import write_json

    task = effective_task(cfg, task)
    path = os.path.join(cfg.output_dir, RESULT_FILES[task])
    benchmark_path = os.path.join(cfg.output_dir, benchmark_file(task))
    check_output_file(path, "output_dir")
    check_output_file(benchmark_path, "output_dir")
    result = run(cfg, task, checkpoint, sharded, cache_dir)
    if result is None:
        return None
    if result.get("n") == 0:  # an accuracy over nothing is not a result
        raise UserError(f"{task}: no image was evaluated ({result.get('skipped', 0)} unreadable); "
                        f"{path} not written")
    from clip.data.webdataset import write_pending_indexes

    write_pending_indexes()  # shard indexes built while evaluating
    if weights_label is not None:
        result["checkpoint"] = weights_label
    if "worst" in result:
        from clip.eval.zeroshot import confusion_summary

        log.info("%s", confusion_summary(result["worst"]))
    write_json(path, result)
    write_json(benchmark_path, benchmark_json(result, task))
    print(report(result, task), flush=True)
    log.info("wrote %s and %s", path, benchmark_path)
    return result


def benchmark_json(result: dict, task: str) -> dict:
    """The CLIP_benchmark form of a result: `pretrained` is the weights file's name (random: none)."""
    from clip.eval.results import benchmark_record, dataset_name

    dataset = result["dataset"]
    weights = result.get("checkpoint")
    pretrained = os.path.splitext(os.path.basename(weights))[0] if weights else "random"
    return benchmark_record(result, task, dataset_name(dataset["type"], dataset["path"]), result["model"],
                            pretrained, result.get("recall_k", ()))


def report(result: dict, task: str) -> str:
    """The one-line summary printed on stdout."""
    if task == "linear_probe":
        return (f"linear probe top1 {result['lp_acc1']:.2f}% top5 {result['lp_acc5']:.2f}% mean per-class recall "
                f"{result['lp_mean_per_class_recall']:.2f}% on {result['n']} images ({result['n_train']} to train, "
                f"C {result['C']:g})")
    if "mean_average_precision" in result:
        return (f"zero-shot mean average precision {result['mean_average_precision']:.2f}% on {result['n']} "
                f"images, {result['classes']} classes x {result['templates']} templates")
    if task == "zeroshot":
        return (f"zero-shot top1 {result['top1']:.2f}% top5 {result['top5']:.2f}% on {result['n']} images, "
                f"{result['classes']} classes x {result['templates']} templates")
    parts = [f"{k} {v:.2f}" for k, v in result.items() if "_R@" in k]
    return f"retrieval {result['images']} images {result['captions']} captions: " + " ".join(parts)


# ---------------------------------------------------------------- prediction

def default_labels(cfg: RunConfig) -> list[str]:
    """Candidate labels when none are given: the class names of data.eval (as MindFormers' zero-shot config)."""
    from clip.data import build_eval_source

    if cfg.data.eval is None:
        raise UserError("candidate labels: none given and data.eval is not set to take class names from")
    return list(build_eval_source(cfg.data.eval).classnames)


def expand_inputs(input_data) -> tuple[list, bool]:
    """(items, single): PIL images and image paths, directories expanded to their images (sorted);
    `single` when one image (not a list or a directory) was given."""
    from PIL import Image

    from clip.eval.predict import expand_image_paths

    single = not isinstance(input_data, (list, tuple))
    items: list = []
    for item in ([input_data] if single else input_data):
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            single = single and not os.path.isdir(path)
            items += expand_image_paths([path])
        elif isinstance(item, Image.Image):
            items.append(item)
        else:
            raise UserError(f"input_data: got {type(item).__name__}, expected a PIL image, an image path or a "
                            f"directory (or a list of them)")
    return items, single


def decode_all(items: Sequence) -> list:
    """Every image decoded before the model loads, so that a bad file fails early (named in the error)."""
    from clip.eval.predict import as_image

    return [as_image(item) for item in items]


def predict_images(model, images: Sequence, labels: Sequence[str], top_k: Optional[int],
                   template: str) -> list[list[dict]]:
    """The clip.predict pipeline over decoded images, in the pipeline's batches."""
    from clip.eval.predict import ZeroShotImageClassificationPipeline

    pipe = ZeroShotImageClassificationPipeline(model, labels, template, top_k)
    out: list = []
    for start in range(0, len(images), pipe.batch_size):
        out += pipe(images[start:start + pipe.batch_size])
    return out


