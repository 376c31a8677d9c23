"""MindFormers-style `Trainer` and the run-mode functions behind `python -m clip --run_mode ...`.

Both are thin fronts over the command-line tools, so that results equal theirs: training is
`clip.train.train`, evaluation is `clip.evaluate.run` (plus the same eval.json and summary line as
`python -m clip.eval`), prediction is the `clip.predict` pipeline. Dataset directories given the MindFormers
way (a Flickr8k folder to pretrain on, a CIFAR-100 folder to evaluate on) become `data.train` / `data.eval`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from typing import Any, Mapping, Optional, Sequence

from clip.config import RunConfig, all_keys, build, load_config, validate
from clip.data.base import DatasetConfig
from clip.errors import UserError

log = logging.getLogger("clip.trainer")

PRETRAIN = "contrastive_language_image_pretrain"
ZERO_SHOT = "zero_shot_image_classification"
TASKS = (PRETRAIN, ZERO_SHOT)
MULTI_CARD_HINT = ("the Trainer runs one card in this process and never starts a cluster; for several cards use "
                   "bash scripts/run_distribute.sh N CONFIG")
INITIAL_WEIGHTS = "initial_model.ckpt"


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


# ---------------------------------------------------------------- weights

def existing_file(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} {path!r} does not exist")
    return path


def weights_for(cfg: RunConfig, checkpoint: Optional[str] = None) -> str:
    """Weights to evaluate or predict with: the given checkpoint, else model.checkpoint, else the preset's
    converted weights in the model directory (a UserError naming the file and the convert command if absent)."""
    from clip.model import pretrained_checkpoint

    if checkpoint:
        return existing_file(checkpoint, "checkpoint")
    if cfg.model.checkpoint:
        return cfg.model.checkpoint
    return pretrained_checkpoint(cfg.model.name)


def preset_of_checkpoint(path: str) -> str:
    """The preset whose shapes the checkpoint has (training runs need a named preset)."""
    from clip.model import checkpoint_shapes, model_name
    from clip.presets import infer_config

    name = model_name(infer_config(checkpoint_shapes(path)))
    if name == "custom":
        raise UserError(f"checkpoint {path!r} does not match any preset's shapes; the Trainer needs one of "
                        f"the names CLIPModel.show_support_list() prints")
    return name


def save_weights(model, path: str) -> str:
    """A model's parameters (OpenAI names) as a MindSpore checkpoint, written atomically."""
    import mindspore as ms

    from clip.safe_write import write_with

    return write_with(path, lambda tmp: ms.save_checkpoint(model, tmp), mode=None)


def require_single_card(env: Mapping[str, str]) -> None:
    """Refuse to run inside a multi-worker launch: each worker would train alone on a copy of the job."""
    from clip.distributed import plan_from_env

    try:
        plan = plan_from_env(env)
    except UserError as exc:
        raise UserError(f"{exc}; {MULTI_CARD_HINT}") from None
    if plan.world_size > 1 or plan.role != "worker":
        raise UserError(f"this process is {plan.role} {plan.rank} of a {plan.world_size}-card {plan.startup} launch; "
                        f"{MULTI_CARD_HINT}")


# ---------------------------------------------------------------- run modes (shared with python -m clip)

def run_train(cfg: RunConfig) -> dict:
    """`python -m clip.train`'s job; returns rank 0's final zero-shot result."""
    from clip.train import train

    return train(cfg)


def run_eval(cfg: RunConfig, checkpoint: Optional[str], weights_label: Optional[str] = None) -> Optional[dict]:
    """`python -m clip.eval` (zero-shot on data.eval): result on rank 0, also written to eval.json."""
    from clip.evaluate import RESULT_FILES, report, run
    from clip.safe_write import write_json
    from clip.zeroshot import confusion_summary

    result = run(cfg, "zeroshot", checkpoint, sharded=False)
    if result is not None:
        if weights_label is not None:
            result["checkpoint"] = weights_label
        log.info("%s", confusion_summary(result["worst"]))
        write_json(os.path.join(cfg.output_dir, RESULT_FILES["zeroshot"]), result)
        print(report(result, "zeroshot"), flush=True)
    return result


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

    from clip.predict import expand_image_paths

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
    from clip.predict import as_image

    return [as_image(item) for item in items]


def predict_images(model, images: Sequence, labels: Sequence[str], top_k: Optional[int],
                   template: str) -> list[list[dict]]:
    """The clip.predict pipeline over decoded images, in the pipeline's batches."""
    from clip.predict import ZeroShotImageClassificationPipeline

    pipe = ZeroShotImageClassificationPipeline(model, labels, template, top_k)
    out: list = []
    for start in range(0, len(images), pipe.batch_size):
        out += pipe(images[start:start + pipe.batch_size])
    return out


# ---------------------------------------------------------------- the Trainer

class Trainer:
    """`Trainer(task, model, train_dataset, eval_dataset, config)` with `.train()`, `.evaluate()`, `.predict()`,
    shaped like MindFormers' Trainer.

    Single card, in this process: it never starts a cluster, and refuses to run inside a multi-worker launch
    (use scripts/run_distribute.sh, which runs `python -m clip.train` on every card).

    model: a CLIPModel, a preset name or a .ckpt path. A preset name trains from scratch (or from
    model.checkpoint) and evaluates/predicts with model.checkpoint or else the converted weights in the model
    directory (see CLIPModel.from_pretrained). After `.train()`, evaluation and prediction use the trained
    `<output_dir>/checkpoints/last.ckpt`.
    train_dataset / eval_dataset: a directory or file (Flickr8k or CSV to pretrain on, CIFAR-100 or an image
    folder to evaluate on), a DatasetConfig, or None for the config's data.train / data.eval.
    config: a YAML path, a RunConfig, or a dict of overrides of the defaults.
    """

    def __init__(self, task: str = PRETRAIN, model=None, train_dataset=None, eval_dataset=None, config=None):
        if task not in TASKS:
            raise UserError(f"task {task!r} is not supported; expected one of {', '.join(TASKS)}")
        require_single_card(os.environ)
        from clip.model import CLIPModel, model_name
        from clip.presets import PRESETS

        cfg = with_datasets(config_from(config), train_dataset, eval_dataset)
        self._model = None
        if isinstance(model, CLIPModel):
            name = model_name(model.config)
            if name == "custom":
                raise UserError("model: a CLIPModel with a custom config; the Trainer needs a preset's shapes "
                                "(CLIPModel.show_support_list())")
            cfg = with_model(cfg, name=name, dtype=model.config.dtype)
            self._model = model
        elif isinstance(model, (str, os.PathLike)):
            model = os.fspath(model)
            if model in PRESETS:
                cfg = with_model(cfg, name=model)
            elif os.path.isfile(model):
                cfg = with_model(cfg, name=preset_of_checkpoint(model), checkpoint=model)
            else:
                raise UserError(f"model {model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint file")
        elif model is not None:
            raise UserError(f"model: got {type(model).__name__}, expected a CLIPModel, a preset name or a .ckpt path")
        self.task = task
        self.config = cfg
        self._trained: Optional[str] = None
        self._loaded: Optional[tuple] = None  # ((weights path, mtime), model) of the last prediction

    def train(self) -> dict:
        """Train as `python -m clip.train` does (outputs in config.output_dir); returns the final zero-shot
        result on data.eval ({} without one)."""
        if self.task != PRETRAIN:
            raise UserError(f"task {self.task!r} does not train (as in MindFormers); use task={PRETRAIN!r}")
        cfg = self.config
        if self._model is not None:
            path = save_weights(self._model, os.path.join(cfg.output_dir, INITIAL_WEIGHTS))
            cfg = with_model(cfg, checkpoint=path)
        result = run_train(cfg)
        self._trained = os.path.join(cfg.output_dir, "checkpoints", "last.ckpt")
        return result

    def evaluate(self, eval_checkpoint: Optional[str] = None) -> dict:
        """Zero-shot classification on data.eval as `python -m clip.eval` does (also writes eval.json)."""
        if eval_checkpoint or self._trained or self._model is None:
            return run_eval(self.config, self._weights(eval_checkpoint))
        with tempfile.TemporaryDirectory(prefix="clip-trainer-") as folder:
            path = save_weights(self._model, os.path.join(folder, "model.ckpt"))
            return run_eval(self.config, path, weights_label="CLIPModel object (in memory)")

    def predict(self, input_data, candidate_labels: Optional[Sequence[str]] = None, top_k: Optional[int] = 3,
                template: Optional[str] = None, predict_checkpoint: Optional[str] = None):
        """Label probabilities as `clip.pipeline(...)` gives them: [{"score", "label"}] for one image, a list
        of such lists for a list or a directory. Labels default to data.eval's class names."""
        from clip.predict import DEFAULT_TEMPLATE, check_labels, check_template, resolve_model

        labels = check_labels(candidate_labels) if candidate_labels is not None else default_labels(self.config)
        template = check_template(template if template is not None else DEFAULT_TEMPLATE)
        items, single = expand_inputs(input_data)
        images = decode_all(items)
        if predict_checkpoint or self._trained or self._model is None:
            path = self._weights(predict_checkpoint)
            key = (path, os.stat(path).st_mtime_ns)
            if self._loaded is None or self._loaded[0] != key:  # reload only when the weights file changed
                self._loaded = (key, resolve_model(self.config.model.name, path, self.config.model.dtype))
            model = self._loaded[1]
        else:
            model = self._model
        results = predict_images(model, images, labels, top_k, template)
        return results[0] if single else results

    def _weights(self, checkpoint: Optional[str]) -> str:
        if checkpoint:
            return existing_file(checkpoint, "checkpoint")
        return self._trained or weights_for(self.config)
