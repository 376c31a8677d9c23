"""Linear probe with the CLIP paper's protocol: image embeddings of a labelled set's train and test splits, an
L2-regularised logistic regression (scikit-learn's L-BFGS, as the paper used) whose inverse strength C is
chosen on a held-out part of the train split, then refitted on the whole train split and scored on test.

Features are computed sharded when every rank calls in: each encodes every world-th image into its rows of an
[N, E] matrix left zero elsewhere, and the sum over ranks is the single-process matrix exactly; the fit runs
where the result is wanted.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from clip.eval.encode import encode_in_batches, encoder, l2_normalize, worth_compiling
from launcher.errors import UserError

log = logging.getLogger(__name__)

# The paper sweeps C over 1e-6 .. 1e6; a decade apart keeps a small set fast and the choice reproducible.
C_GRID = tuple(10.0 ** e for e in range(-6, 7))
HELD_OUT = 0.2            # share of each class's train images held out to choose C
MAX_ITER = 1000
SPLIT_SEED = 0


def features_of(model, source, image_size: int, batch_size: int,
                shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L2-normalised embeddings [N, E], labels [N], readable [N] bool) of this rank's share of the source,
    zero elsewhere; summing the three over ranks gives every row. Unreadable images are skipped (logged)."""
    from clip.data.base import UnreadableImage
    from clip.model.transforms import image_transform

    rank, world = shard
    transform = image_transform(image_size, model.config.preprocess)
    n, dim = len(source), model.config.embed_dim
    features, labels, readable = np.zeros((n, dim), np.float32), np.zeros(n, np.int64), np.zeros(n, np.int64)
    mine = list(range(rank, n, world))
    compiled = worth_compiling(len(mine), batch_size)
    encode = encoder(model, "image", compiled)
    rows, pixels = [], []

    def flush():
        if rows:
            out = encode_in_batches(encode, np.stack(pixels).astype(np.float32), batch_size, pad=compiled)
            features[rows] = l2_normalize(out)
            rows.clear()
            pixels.clear()

    for i in mine:
        try:
            image, label = source[i]
        except UnreadableImage as exc:
            log.warning("skipping unreadable image %s", exc)
            continue
        rows.append(i)
        pixels.append(transform(image))
        labels[i], readable[i] = label, 1
        if len(rows) == batch_size:
            flush()
    flush()
    return features, labels, readable


def held_out_split(labels: np.ndarray, share: float = HELD_OUT, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) indices: per class, a seeded `share` of its images (at least one when it has two)."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(share * len(idx))) if len(idx) > 1 else 0
        k = max(k, 1) if len(idx) > 1 else 0
        held += idx[:k].tolist()
        fit += idx[k:].tolist()
    return np.sort(np.asarray(fit, np.int64)), np.sort(np.asarray(held, np.int64))


def fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER).fit(x, y)


def choose_c(x: np.ndarray, y: np.ndarray) -> tuple[float, list[dict]]:
    """The C with the best held-out accuracy (the smallest such C: the strongest regularisation) and the sweep."""
    train, held = held_out_split(y)
    if len(np.unique(y[train])) < 2 or not len(held):
        raise UserError("linear probe: the train split needs at least two classes with two images each "
                        "(one is held out to choose the regularisation)")
    sweep = []
    for c in C_GRID:
        accuracy = float((fit(x[train], y[train], c).predict(x[held]) == y[held]).mean())
        sweep.append({"C": c, "held_out_acc1": 100.0 * accuracy})
    best = max(sweep, key=lambda r: (r["held_out_acc1"], -r["C"]))
    return best["C"], sweep


def scores(classifier, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities [N, n_classes] (classes absent from the train split get 0)."""
    out = np.zeros((len(x), n_classes))
    out[:, classifier.classes_] = classifier.predict_proba(x)
    return out


def metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """lp_acc1, lp_acc5 and lp_mean_per_class_recall in percent (ties to the lower class index)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :5]
    hit1 = order[:, 0] == labels
    recalls = [hit1[labels == c].mean() for c in np.unique(labels)]
    return {"lp_acc1": 100.0 * float(hit1.mean()),
            "lp_acc5": 100.0 * float((order == labels[:, None]).any(axis=1).mean()),
            "lp_mean_per_class_recall": 100.0 * float(np.mean(recalls))}


def evaluate_probe(model, train_source, test_source, image_size: int, batch_size: int,
                   sharded: bool = False) -> Optional[dict]:
    """The linear-probe result on rank 0 (None on the other ranks of a sharded run)."""
    rank, world = 0, 1
    if sharded:
        from clip.parallel import distributed

        rank, world = distributed.get_rank(), distributed.get_world_size()
    started = time.time()
    parts = []
    for source in (train_source, test_source):
        f, y, ok = features_of(model, source, image_size, batch_size, (rank, world))
        if world > 1:
            from clip.eval.zeroshot import all_reduced

            f, y, ok = all_reduced(f, world), all_reduced(y, world), all_reduced(ok, world)
        keep = ok.astype(bool)
        parts.append((f[keep].astype(np.float64), y[keep], int((~keep).sum())))
    feature_seconds = time.time() - started
    if rank != 0:
        return None
    (x_train, y_train, skipped_train), (x_test, y_test, skipped_test) = parts
    if not len(x_test):
        raise UserError("linear probe: the test split has no readable images")
    best_c, sweep = choose_c(x_train, y_train)
    classifier = fit(x_train, y_train, best_c)
    result = metrics(scores(classifier, x_test, len(test_source.classnames)), y_test)
    result.update(C=best_c, sweep=sweep, n_train=len(y_train), n=len(y_test), classes=len(test_source.classnames),
                  skipped=skipped_train + skipped_test, feature_seconds=round(feature_seconds, 3),
                  fit_seconds=round(time.time() - started - feature_seconds, 3))
    return result
