"""Zero-shot prediction over candidate labels: `python -m clip.predict` and `clip.pipeline(...)`.

Each label becomes a prompt through a template; an image's scores are the probabilities the model was trained
to produce: the softmax over labels of exp(logit_scale) * cosine similarity for a CLIP model, and for a model
with a logit bias (SigLIP) each label's own sigmoid of exp(logit_scale) * cosine similarity + logit_bias.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from clip.model import hf_tokenizer
from clip.model.architectures import DTYPES
from launcher import worker
from launcher.errors import ArgumentParser, UserError, exit_on_user_error, integer, path, text

DEFAULT_TEMPLATE = "a photo of a {}."
TASK = "zero_shot_image_classification"
_SAFE_MODES = {"1", "L", "LA", "P", "RGB", "RGBA"}


# ---------------------------------------------------------------- pure helpers

def parse_labels(text: str) -> list[str]:
    """"cat, dog,bird" -> ["cat", "dog", "bird"]; empty or repeated labels are a UserError."""
    labels = [part.strip() for part in text.split(",")]
    return check_labels(labels, "--labels")


def check_labels(labels: Sequence[str], what: str = "candidate_labels") -> list[str]:
    labels = list(labels)
    if not labels or any(not isinstance(lb, str) or not lb.strip() for lb in labels):
        raise UserError(f"{what}: {labels!r} must be a non-empty list of non-empty labels")
    seen = set()
    for lb in labels:
        if lb in seen:
            raise UserError(f"{what}: label {lb!r} is given twice")
        seen.add(lb)
    return labels


def check_template(template: str) -> str:
    from clip.data.base import is_template

    if not is_template(template):
        raise UserError(f"--template {template!r}: expected a text with exactly one '{{}}' for the label")
    return template


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow for either sign."""
    return np.exp(-np.logaddexp(0.0, -logits))


def ranked(probs: np.ndarray, labels: Sequence[str], top_k: Optional[int]) -> list[dict]:
    """[{"score", "label"}] sorted by score (ties by label order), cut to top_k."""
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [{"score": float(probs[i]), "label": labels[i]} for i in order]


def format_table(results: list[tuple[str, list[dict]]]) -> str:
    lines = []
    for name, preds in results:
        lines.append(name)
        lines += [f"  {p['score']:8.4f}  {p['label']}" for p in preds]
    return "\n".join(lines)


# ---------------------------------------------------------------- images

def expand_image_paths(paths: Sequence[str]) -> list[str]:
    """Files as given; directories replaced by the image files inside them (sorted, recursive)."""
    from clip.data.imagefolder import list_images

    out = []
    for path in paths:
        if os.path.isdir(path):
            found = list_images(path)
            if not found:
                raise UserError(f"--image {path!r}: directory has no image files")
            out += found
        else:
            out.append(path)
    return out


def to_supported_mode(image: Image.Image) -> Image.Image:
    """Bring exotic modes (16-bit, float, CMYK, YCbCr, premultiplied...) to one the preprocessing handles;
    high-bit-depth images are scaled to 8 bits instead of clipped."""
    if image.mode in _SAFE_MODES:
        return image
    if image.mode.startswith("I") or image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        top = arr.max() if arr.size else 0.0
        scale = 1.0 if top <= 255 else (255.0 / 65535 if top <= 65535 else 255.0 / top)
        if image.mode == "F" and 0 < top <= 1.0:
            scale = 255.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGBA" if image.mode in ("PA", "La", "RGBa") else "RGB")


def load_image(path: str) -> Image.Image:
    """A fully decoded image from a file, or a one-line UserError naming the file."""
    from clip.model.transforms import reduce_while_decoding

    if not os.path.exists(path):
        raise UserError(f"image {path!r} does not exist")
    try:
        with Image.open(path) as img:
            reduce_while_decoding(img).load()
            return to_supported_mode(img.copy())
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"image {path!r} cannot be read ({str(exc) or type(exc).__name__})") from None


def as_image(item) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_supported_mode(item)
    if isinstance(item, (str, os.PathLike)):
        return load_image(os.fspath(item))
    raise UserError(f"image: got {type(item).__name__}, expected a PIL image or a path")


class ZeroShotImageClassificationPipeline:
    """Callable: image(s) -> [{"score", "label"}] sorted; label embeddings are computed once per label set."""

    def __init__(self, model, candidate_labels: Optional[Sequence[str]] = None,
                 template: str = DEFAULT_TEMPLATE, top_k: Optional[int] = None, batch_size: int = 32):
        from clip.model.transforms import image_transform

        self.model = model
        self.model.set_train(False)
        self.candidate_labels = check_labels(candidate_labels) if candidate_labels is not None else None
        self.template = check_template(template)
        self.top_k = top_k
        self.batch_size = batch_size
        self.transform = image_transform(model.config.image_size, model.config.preprocess)
        self._text_cache: dict = {}

    def label_features(self, labels: Sequence[str], template: str) -> np.ndarray:
        """Normalised prompt embeddings [L, E] for the labels."""
        from clip.eval.encode import encode_texts, l2_normalize

        key = (tuple(labels), template)
        if key not in self._text_cache:
            self._text_cache = {key: l2_normalize(encode_texts(self.model, [template.format(lb) for lb in labels]))}
        return self._text_cache[key]

    def scores(self, images: Sequence[Image.Image], labels: Sequence[str], template: str) -> np.ndarray:
        """Probabilities [N, L] over labels for each image."""
        from clip.eval.encode import encode_images, l2_normalize

        pixels = np.stack([self.transform(im) for im in images]).astype(np.float32)
        features = l2_normalize(encode_images(self.model, pixels, self.batch_size))
        scale = float(np.exp(self.model.logit_scale.asnumpy()))
        logits = scale * features.astype(np.float64) @ self.label_features(labels, template).T
        bias = getattr(self.model, "logit_bias", None)
        if bias is not None:  # SigLIP: independent per-label probabilities, as its loss trained them
            return sigmoid(logits + float(bias.asnumpy()))
        return softmax(logits)

    def __call__(self, images, candidate_labels: Optional[Sequence[str]] = None,
                 template: Optional[str] = None, top_k: Optional[int] = None):
        labels = check_labels(candidate_labels) if candidate_labels is not None else self.candidate_labels
        if labels is None:
            raise UserError("candidate_labels: not given (pass them to pipeline(...) or to the call)")
        template = check_template(template) if template is not None else self.template
        top_k = top_k if top_k is not None else self.top_k
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise UserError(f"top_k={top_k!r}: expected a positive integer")
        single = not isinstance(images, (list, tuple))
        batch = [as_image(im) for im in ([images] if single else images)]
        if not batch:
            return []
        probs = self.scores(batch, labels, template)
        results = [ranked(p, labels, top_k) for p in probs]
        return results[0] if single else results


def pipeline(task: str = TASK, model=None, candidate_labels: Optional[Sequence[str]] = None,
             template: str = DEFAULT_TEMPLATE, checkpoint: Optional[str] = None, dtype: str = "float32",
             top_k: Optional[int] = None, tokenizer: Optional[str] = None,
             ema_weights: bool = False) -> ZeroShotImageClassificationPipeline:
    """`pipeline("zero_shot_image_classification", model=<CLIPModel | preset | .ckpt>, candidate_labels=[...])`;
    `tokenizer` is a SigLIP model's vocabulary file (docs/models.md "Tokenizers"); `ema_weights` takes a training
    checkpoint's moving averages."""
    from clip.model import load_model
    from clip.model.hf_tokenizer import attach

    if task != TASK:
        raise UserError(f"pipeline task {task!r} is not supported (expected {TASK!r})")
    loaded = load_model(model, checkpoint, dtype, ema_weights=ema_weights)
    if tokenizer is not None or getattr(loaded, "tokenize", None) is None:
        attach(loaded, tokenizer, "tokenizer")
    return ZeroShotImageClassificationPipeline(loaded, candidate_labels, template, top_k)


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clip.predict",
                                     description="Zero-shot label probabilities for images.")
    parser.add_argument("--checkpoint", required=True, type=path("file"),
                        help="MindSpore checkpoint (OpenAI parameter names)")
    parser.add_argument("--model", type=text(nonempty=True),
                        help="model name or open_clip JSON config (default: the architecture the "
                                        "checkpoint carries)")
    parser.add_argument("--ema-weights", action="store_true",
                        help="the checkpoint's moving averages (a training checkpoint of a run with "
                             "train.ema_decay) instead of its raw weights")
    parser.add_argument("--image", nargs="+", required=True, metavar="PATH", type=path("path"),
                        help="image files or directories")
    parser.add_argument("--labels", required=True, type=text(nonempty=True),
                        help='candidate labels, comma-separated: "cat,dog,bird"')
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, type=text(nonempty=True),
                        help=f"prompt template (default {DEFAULT_TEMPLATE!r})")
    hf_tokenizer.add_argument(parser)
    parser.add_argument("--top-k", type=integer(ge=1), default=None, help="show only the K most likely labels")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


@exit_on_user_error
@worker.record
def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    worker.install()
    labels = parse_labels(args.labels)
    template = check_template(args.template)
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: expected a positive integer")
    from clip.model import load_model
    from clip.model.hf_tokenizer import attach

    paths = expand_image_paths(args.image)
    for path in paths:  # every file is decoded once before the model loads, so errors come first
        load_image(path)
    model = load_model(args.model, args.checkpoint, args.dtype, ema_weights=args.ema_weights) if args.model else \
        load_model(args.checkpoint, None, args.dtype, ema_weights=args.ema_weights)
    attach(model, args.tokenizer, "--tokenizer")
    pipe = ZeroShotImageClassificationPipeline(model, labels, template, args.top_k)
    results = []
    for start in range(0, len(paths), pipe.batch_size):
        chunk = paths[start:start + pipe.batch_size]
        results += list(zip(chunk, pipe(chunk)))
    if args.json:
        print(json.dumps([{"image": p, "predictions": preds} for p, preds in results], indent=1))
    else:
        print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
