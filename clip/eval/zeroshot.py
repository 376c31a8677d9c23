"""Zero-shot classification with the CLIP protocol: a text classifier from class names x templates, then
accuracy counts over labelled images.

Counts (not accuracies) are the unit of work so that sharded evaluation can sum them over ranks and get
exactly the numbers a single process gets.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from clip.eval.encode import encode_in_batches, encode_texts, encoder, l2_normalize, worth_compiling
from launcher.errors import UserError

log = logging.getLogger(__name__)

LOGIT_SCALE = 100.0


def prompts_for(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: class c's templates are rows c*T .. c*T+T-1."""
    return [t.format(c) for c in classnames for t in templates]


def classifier_from_text_features(features: np.ndarray, n_classes: int) -> np.ndarray:
    """[C*T, E] class-major prompt embeddings -> [E, C]: normalise each, average per class, renormalise."""
    per_class = l2_normalize(features.astype(np.float64)).reshape(n_classes, -1, features.shape[-1])
    return l2_normalize(per_class.mean(axis=1)).T.astype(np.float32)


def build_classifier(model, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256,
                     shard: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The zero-shot classifier [E, C]. With shard=(rank, world) this rank encodes only the classes
    c = rank (mod world) and the others' columns stay zero, so summing over ranks gives the full matrix."""
    if not classnames or not templates:
        raise UserError("zero-shot needs at least one class name and one template")
    rank, world = shard or (0, 1)
    mine = list(range(rank, len(classnames), world))
    classifier = np.zeros((model.config.embed_dim, len(classnames)), np.float32)
    if mine:
        features = encode_texts(model, prompts_for([classnames[c] for c in mine], templates), batch_size)
        classifier[:, mine] = classifier_from_text_features(features, len(mine))
    return classifier


@dataclass
class Counts:
    """Per-class tallies: top-1 hits, top-5 hits, samples, and the confusion matrix [true, predicted]."""

    top1: np.ndarray
    top5: np.ndarray
    total: np.ndarray
    confusion: np.ndarray

    @classmethod
    def zeros(cls, n_classes: int) -> "Counts":
        z = np.zeros(n_classes, np.int64)
        return cls(z.copy(), z.copy(), z.copy(), np.zeros((n_classes, n_classes), np.int64))

    def add(self, other: "Counts") -> "Counts":
        return Counts(self.top1 + other.top1, self.top5 + other.top5, self.total + other.total,
                      self.confusion + other.confusion)

    def to_vector(self) -> np.ndarray:
        """All tallies in one int64 vector, for a single all-reduce."""
        return np.concatenate([self.top1, self.top5, self.total, self.confusion.ravel()]).astype(np.int64)

    @classmethod
    def from_vector(cls, vec: np.ndarray, n_classes: int) -> "Counts":
        v = np.asarray(vec, np.int64)
        c = n_classes
        return cls(v[:c], v[c:2 * c], v[2 * c:3 * c], v[3 * c:].reshape(c, c))


def count_batch(logits: np.ndarray, labels: np.ndarray) -> Counts:
    """Tallies for one batch of logits [N, C] against integer labels [N]."""
    n_classes = logits.shape[1]
    k = min(5, n_classes)
    labels = np.asarray(labels, np.int64)
    # Sort by descending score, ties broken by class index, so that results do not depend on batching.
    order = np.argsort(-logits, axis=1, kind="stable")
    hit1 = order[:, 0] == labels
    hit5 = (order[:, :k] == labels[:, None]).any(axis=1)
    counts = Counts.zeros(n_classes)
    np.add.at(counts.top1, labels, hit1)
    np.add.at(counts.top5, labels, hit5)
    np.add.at(counts.total, labels, 1)
    np.add.at(counts.confusion, (labels, order[:, 0]), 1)
    return counts


def logits_for(image_features: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    return LOGIT_SCALE * l2_normalize(image_features) @ classifier


def count_predictions(model, classifier: np.ndarray, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                      batch_size: Optional[int] = None, compiled: bool = False) -> Counts:
    """Encode each batch of pixels [N,3,H,W] and tally its predictions against labels [N]; a compiled
    encoder gets every batch padded to batch_size (one shape, one compilation)."""
    encode = encoder(model, "image", compiled)
    counts = Counts.zeros(classifier.shape[1])
    for pixels, labels in batches:
        if len(labels) == 0:
            continue
        features = encode_in_batches(encode, pixels.astype(np.float32, copy=False), batch_size or len(pixels),
                                     pad=compiled)
        counts = counts.add(count_batch(logits_for(features, classifier), labels))
    return counts


def summarize(counts: Counts) -> dict:
    """top1/top5 in percent over all samples, per-class top-1 (None for classes without samples), n, and
    their mean over the classes that have samples (scikit-learn's balanced accuracy, CLIP_benchmark's
    mean_per_class_recall), which a class-imbalanced set cannot inflate."""
    n = int(counts.total.sum())
    per_class = [100.0 * int(h) / int(t) if t else None for h, t in zip(counts.top1, counts.total)]
    present = [v for v in per_class if v is not None]
    return {"top1": 100.0 * counts.top1.sum() / n if n else 0.0,
            "top5": 100.0 * counts.top5.sum() / n if n else 0.0,
            "mean_per_class_recall": float(np.mean(present)) if present else 0.0,
            "per_class": per_class, "n": n}


def worst_classes(counts: Counts, classnames: Sequence[str], n: int = 10) -> list[dict]:
    """The n classes with the lowest top-1 and what they were most often mistaken for."""
    rows = []
    for c in range(len(classnames)):
        if not counts.total[c]:
            continue
        wrong = counts.confusion[c].copy()
        wrong[c] = 0
        confused = int(np.argmax(wrong))
        rows.append({"class": classnames[c], "top1": 100.0 * counts.top1[c] / counts.total[c],
                     "n": int(counts.total[c]),
                     "confused_with": classnames[confused] if wrong[confused] else None,
                     "confused_count": int(wrong[confused])})
    rows.sort(key=lambda r: (r["top1"], r["class"]))
    return rows[:n]


def confusion_summary(rows: list[dict]) -> str:
    lines = ["worst classes (top-1, most frequent wrong prediction):"]
    for r in rows:
        mix = f"{r['confused_with']} x{r['confused_count']}" if r["confused_with"] else "-"
        lines.append(f"  {r['class']:<24} {r['top1']:6.2f}%  of {r['n']:<5} -> {mix}")
    return "\n".join(lines)


def iterate_batches(source, transform, batch_size: int, indices: Sequence[int],
                    skipped: Optional[list] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Preprocessed (pixels, labels) batches of source[i] for i in indices; unreadable images are skipped
    and their names appended to `skipped`."""
    from clip.data.base import UnreadableImage

    pixels, labels = [], []
    for i in indices:
        try:
            image, label = source[i]
        except UnreadableImage as exc:
            log.warning("skipping unreadable image %s", exc)
            if skipped is not None:
                skipped.append(source.name(i))
            continue
        pixels.append(transform(image))
        labels.append(label)
        if len(pixels) == batch_size:
            yield np.stack(pixels), np.asarray(labels, np.int64)
            pixels, labels = [], []
    if pixels:
        yield np.stack(pixels), np.asarray(labels, np.int64)


def zero_shot_eval(model, eval_cfg, image_size: int, batch_size: int, sharded: bool = False) -> dict:
    """Zero-shot accuracy of `model` on the data.eval dataset; what the training loop calls on rank 0
    (or, with sharded=True, on every rank)."""
    from clip.data import build_eval_source

    return evaluate_source(model, build_eval_source(eval_cfg), image_size, batch_size, sharded)


class ClassifierCache:
    """Zero-shot classifiers on disk, one `.npy` per (weights, class names, templates): a benchmark over many
    sets that share a class list (ImageNet and its variants) encodes the prompts once per checkpoint, and a
    resumed benchmark not at all. `weights` must identify the model (file, size, mtime, name, dtype)."""

    def __init__(self, directory: str, weights: Sequence):
        self.directory, self.weights = directory, tuple(weights)

    def path(self, classnames: Sequence[str], templates: Sequence[str]) -> str:
        import hashlib
        import json
        import os

        text = json.dumps([list(map(str, self.weights)), list(classnames), list(templates)])
        return os.path.join(self.directory, hashlib.sha256(text.encode()).hexdigest()[:32] + ".npy")

    def get(self, classnames: Sequence[str], templates: Sequence[str]) -> Optional[np.ndarray]:
        import os

        path = self.path(classnames, templates)
        return np.load(path, allow_pickle=False) if os.path.isfile(path) else None

    def put(self, classnames: Sequence[str], templates: Sequence[str], classifier: np.ndarray) -> None:
        import io
        import os

        from launcher.safe_write import write_bytes

        buf = io.BytesIO()
        np.save(buf, classifier)
        os.makedirs(self.directory, exist_ok=True)
        write_bytes(self.path(classnames, templates), buf.getvalue())


def evaluate_source(model, source, image_size: int, batch_size: int, sharded: bool = False,
                    cache: Optional[ClassifierCache] = None) -> dict:
    """top1/top5/per-class accuracy, the worst classes and counts for a ClassificationSource.

    With sharded=True every rank must call this: each encodes its share of the classes and images, and the
    classifier and counts are summed over ranks, which gives the single-process numbers exactly. A cache
    (single process) supplies or keeps the classifier."""
    from clip.model.transforms import image_transform

    rank, world = 0, 1
    if sharded:
        from clip.parallel import distributed

        rank, world = distributed.get_rank(), distributed.get_world_size()
    started = time.time()
    classifier = cache.get(source.classnames, source.templates) if cache is not None else None
    if classifier is None:
        classifier = all_reduced(build_classifier(model, source.classnames, source.templates, shard=(rank, world)),
                                 world)
        if cache is not None:
            cache.put(source.classnames, source.templates, classifier)
    text_seconds = time.time() - started
    transform = image_transform(image_size, model.config.preprocess)
    if getattr(source, "multilabel", False):
        return evaluate_multilabel(model, source, classifier, transform, batch_size, (rank, world),
                                   text_seconds)
    skipped: list[str] = []
    indices = range(rank, len(source), world)
    batches = iterate_batches(source, transform, batch_size, indices, skipped)
    counts = count_predictions(model, classifier, batches, batch_size,
                               compiled=worth_compiling(len(indices), batch_size))
    if world > 1:
        counts = Counts.from_vector(all_reduced(counts.to_vector(), world), len(source.classnames))
        n_skipped = int(all_reduced(np.array([len(skipped)], np.int64), world)[0])
    else:
        n_skipped = len(skipped)
    image_seconds = time.time() - started - text_seconds
    result = summarize(counts)
    result["per_class"] = dict(zip(source.classnames, result["per_class"]))
    result.update(worst=worst_classes(counts, source.classnames), skipped=n_skipped,
                  classes=len(source.classnames), templates=len(source.templates),
                  classifier_seconds=round(text_seconds, 3), image_seconds=round(image_seconds, 3),
                  images_per_second=round(result["n"] / image_seconds, 3) if image_seconds > 0 else None)
    return result


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class average precision [C] of scores [N, C] against 0/1 targets [N, C], as CLIP_benchmark computes
    it: rank the images by score, average the precision at the rank of every positive; a class without
    positives scores 0 (and still counts in the mean). Ties go to the lower image index."""
    order = np.argsort(-scores, axis=0, kind="stable")
    truth = np.take_along_axis(np.asarray(targets, np.float64), order, axis=0)
    precision = np.cumsum(truth, axis=0) / np.arange(1, len(scores) + 1)[:, None]
    return (precision * truth).sum(axis=0) / np.maximum(truth.sum(axis=0), 1.0)


def evaluate_multilabel(model, source, classifier: np.ndarray, transform, batch_size: int,
                        shard: tuple[int, int], text_seconds: float) -> dict:
    """Mean average precision over classes for a multilabel source (targets are 0/1 vectors). Each rank
    scores its images into its rows of an [N, C] matrix left zero elsewhere; the sum over ranks is the
    single-process matrix exactly, and the ranking needs every row."""
    rank, world = shard
    started = time.time()
    indices = list(range(rank, len(source), world))
    n_classes = classifier.shape[1]
    scores = np.zeros((len(source), n_classes), np.float32)
    targets = np.zeros((len(source), n_classes), np.int64)
    compiled = worth_compiling(len(indices), batch_size)
    encode = encoder(model, "image", compiled)
    for start in range(0, len(indices), batch_size):
        rows = indices[start:start + batch_size]
        items = [source[i] for i in rows]
        pixels = np.stack([transform(image) for image, _ in items]).astype(np.float32)
        features = encode_in_batches(encode, pixels, batch_size, pad=compiled)
        scores[rows] = logits_for(features, classifier)
        targets[rows] = np.stack([target for _, target in items])
    scores, targets = all_reduced(scores, world), all_reduced(targets, world)
    per_class = average_precision(scores, targets)
    image_seconds = time.time() - started
    return {"mean_average_precision": 100.0 * float(per_class.mean()),
            "per_class_average_precision": dict(zip(source.classnames, (100.0 * per_class).tolist())),
            "n": len(source), "classes": n_classes, "templates": len(source.templates), "skipped": 0,
            "classifier_seconds": round(text_seconds, 3), "image_seconds": round(image_seconds, 3),
            "images_per_second": round(len(source) / image_seconds, 3) if image_seconds > 0 else None}


def all_reduced(array: np.ndarray, world: int) -> np.ndarray:
    """The sum of `array` over the world's ranks (the array itself on one rank)."""
    if world == 1:
        return array
    from clip.parallel import distributed

    out = distributed.all_reduce_sum(array)
    return out.asnumpy() if hasattr(out, "asnumpy") else np.asarray(out)
