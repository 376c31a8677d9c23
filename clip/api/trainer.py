"""MindFormers-style `Trainer`: a thin front over the application layer (clip.api.app), so that its results equal
those of the command-line tools: training is `clip.train.train`, evaluation writes the same eval.json and
summary line as `python -m clip.eval`, prediction is the `clip.predict` pipeline.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

from clip.api.app import (
    config_from,
    decode_all,
    default_labels,
    evaluate_and_write,
    existing_file,
    expand_inputs,
    predict_images,
    preset_of_checkpoint,
    require_single_card,
    save_weights,
    weights_for,
    with_datasets,
    with_model,
)
from launcher.errors import UserError

PRETRAIN = "contrastive_language_image_pretrain"
ZERO_SHOT = "zero_shot_image_classification"
TASKS = (PRETRAIN, ZERO_SHOT)
INITIAL_WEIGHTS = "initial_model.ckpt"


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
        from clip.model.architectures import PRESETS

        cfg = with_datasets(config_from(config), train_dataset, eval_dataset)
        self._model = None
        if isinstance(model, CLIPModel):
            name = model_name(model.config)
            # A custom architecture travels in the saved initial weights (they carry it), not as a name.
            cfg = with_model(cfg, name=None if name == "custom" else name, dtype=model.config.dtype)
            self._model = model
        elif isinstance(model, (str, os.PathLike)):
            model = os.fspath(model)
            if model in PRESETS:
                cfg = with_model(cfg, name=model)
            elif os.path.isfile(model):
                name = preset_of_checkpoint(model)
                cfg = with_model(cfg, name=None if name == "custom" else name, checkpoint=model)
            else:
                from clip.model.architectures import suggest

                raise UserError(f"model {model!r} is neither a preset name nor a checkpoint file; {suggest(model)}")
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
        from clip.train.checkpoint import resume_path
        from clip.train.preflight import check_train

        cfg = self.config
        check_train(cfg, resume_path(cfg.train.resume, cfg.output_dir))
        if self._model is not None:
            path = save_weights(self._model, os.path.join(cfg.output_dir, INITIAL_WEIGHTS))
            cfg = with_model(cfg, checkpoint=path)
        from clip.train import train

        result = train(cfg)
        self._trained = os.path.join(cfg.output_dir, "checkpoints", "last.ckpt")
        return result

    def evaluate(self, eval_checkpoint: Optional[str] = None) -> dict:
        """Zero-shot classification on data.eval as `python -m clip.eval` does (also writes eval.json)."""
        if eval_checkpoint or self._trained or self._model is None:
            return evaluate_and_write(self.config, "zeroshot", self._weights(eval_checkpoint))
        with tempfile.TemporaryDirectory(prefix="clip-trainer-") as folder:
            path = save_weights(self._model, os.path.join(folder, "model.ckpt"))
            return evaluate_and_write(self.config, "zeroshot", path, weights_label="CLIPModel object (in memory)")

    def predict(self, input_data, candidate_labels: Optional[Sequence[str]] = None, top_k: Optional[int] = 3,
                template: Optional[str] = None, predict_checkpoint: Optional[str] = None):
        """Label probabilities as `clip.pipeline(...)` gives them: [{"score", "label"}] for one image, a list
        of such lists for a list or a directory. Labels default to data.eval's class names."""
        from clip.eval.predict import DEFAULT_TEMPLATE, check_labels, check_template
        from clip.model import load_model
        from clip.model.hf_tokenizer import attach

        labels = check_labels(candidate_labels) if candidate_labels is not None else default_labels(self.config)
        template = check_template(template if template is not None else DEFAULT_TEMPLATE)
        items, single = expand_inputs(input_data)
        images = decode_all(items)
        if predict_checkpoint or self._trained or self._model is None:
            path = self._weights(predict_checkpoint)
            key = (path, os.stat(path).st_mtime_ns)
            if self._loaded is None or self._loaded[0] != key:  # reload only when the weights file changed
                # model.ema_weights says how to read the checkpoint a user names, not what this trainer wrote
                ema_weights = self.config.model.ema_weights and path != self._trained
                self._loaded = (key, load_model(self.config.model.name, path, self.config.model.dtype,
                                                   self.config.model.image_size, ema_weights))
                attach(self._loaded[1], self.config.model.tokenizer)
            model = self._loaded[1]
        else:
            model = self._model
        results = predict_images(model, images, labels, top_k, template)
        return results[0] if single else results

    def _weights(self, checkpoint: Optional[str]) -> str:
        if checkpoint:
            return existing_file(checkpoint, "checkpoint")
        return self._trained or weights_for(self.config)
