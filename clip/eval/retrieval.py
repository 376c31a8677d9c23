"""Image<->text retrieval Recall@K on a captioned set (Flickr8k test split: five captions per image, or CSV).

An image query is answered correctly at K when any of its own captions is among the K most similar texts;
a caption query when its image is among the K most similar images.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from launcher.errors import UserError

log = logging.getLogger(__name__)

KS = (1, 5, 10)


def ranks_of_first_hit(similarity: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """For each query row, the 0-based rank of its best-placed relevant item (relevant: bool, same shape).
    Ties are counted against the query: an equal-scoring wrong item is placed ahead."""
    best = np.where(relevant, similarity, -np.inf).max(axis=1)
    return (np.where(relevant, -np.inf, similarity) >= best[:, None]).sum(axis=1)


def recall_at_k(similarity: np.ndarray, text_to_image: np.ndarray, ks: Sequence[int] = KS) -> dict:
    """Recall@K in percent both ways from image-text similarity [I, T] and each text's image index [T]."""
    text_to_image = np.asarray(text_to_image)
    n_images, n_texts = similarity.shape
    if text_to_image.shape != (n_texts,):
        raise ValueError(f"text_to_image has shape {text_to_image.shape}, expected ({n_texts},)")
    relevant = text_to_image[None, :] == np.arange(n_images)[:, None]
    image_ranks = ranks_of_first_hit(similarity, relevant)
    text_ranks = ranks_of_first_hit(similarity.T, relevant.T)
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = 100.0 * float(np.mean(image_ranks < k))
        out[f"text_to_image_R@{k}"] = 100.0 * float(np.mean(text_ranks < k))
    out["mean_recall"] = float(np.mean([v for v in out.values()]))
    return out


def flatten_captions(captions_per_image: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """All captions in one list and, for each, the index of its image."""
    texts, owner = [], []
    for i, caps in enumerate(captions_per_image):
        texts += list(caps)
        owner += [i] * len(caps)
    return texts, np.asarray(owner, np.int64)


def image_share(model, source, image_size: int, batch_size: int,
                shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """(normalised image features [I, E], readable [I] 0/1) for the images i = rank (mod world), zero in the
    other rows: the sum of every rank's share is the whole. Unreadable images are skipped (logged)."""
    from clip.data.base import UnreadableImage
    from clip.eval.encode import encode_in_batches, encoder, l2_normalize, worth_compiling
    from clip.model.transforms import image_transform

    rank, world = shard
    transform = image_transform(image_size, model.config.preprocess)
    mine = list(range(rank, len(source), world))
    compiled = worth_compiling(len(mine), batch_size)
    encode = encoder(model, "image", compiled)
    features = np.zeros((len(source), model.config.embed_dim), np.float32)
    readable = np.zeros(len(source), np.int64)
    rows, pending = [], []
    for n, i in enumerate(mine):
        try:
            pending.append(transform(source.image(i)))
            rows.append(i)
        except UnreadableImage as exc:
            log.warning("skipping unreadable image %s", exc)
        if rows and (len(rows) == batch_size or n == len(mine) - 1):
            features[rows] = l2_normalize(encode_in_batches(encode, np.stack(pending), batch_size, pad=compiled))
            readable[rows] = 1
            rows, pending = [], []
    return features, readable


def text_share(model, texts: Sequence[str], batch_size: int, shard: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Normalised text features [T, E] of the texts t = rank (mod world), zero in the other rows."""
    from clip.eval.encode import encode_texts, l2_normalize

    rank, world = shard
    features = np.zeros((len(texts), model.config.embed_dim), np.float32)
    mine = list(range(rank, len(texts), world))
    if mine:
        features[mine] = l2_normalize(encode_texts(model, [texts[t] for t in mine], batch_size))
    return features


def encode_source(model, source, image_size: int, batch_size: int,
                  shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised image features [I, E], caption features [T, E] and the caption->image index [T] of the
    readable images. With shard=(rank, world) every rank must call this: each encodes its share of the
    images and captions, and the shares are summed over ranks (every row comes from one rank, the others add
    zeros), which gives the single-process matrices."""
    from clip.eval.zeroshot import all_reduced

    world = shard[1]
    features, readable = image_share(model, source, image_size, batch_size, shard)
    features, readable = all_reduced(features, world), all_reduced(readable, world)
    kept = np.flatnonzero(readable)
    if not len(kept):
        raise UserError("retrieval: the dataset has no readable images")
    texts, owner = flatten_captions([source.captions(int(i)) for i in kept])
    text_features = all_reduced(text_share(model, texts, batch_size, shard), world)
    return features[kept], text_features, owner


def evaluate_captions(model, source, image_size: int, batch_size: int, ks: Sequence[int] = KS,
                      sharded: bool = False) -> dict:
    """Recall@K both ways on a CaptionSource, plus the number of images and captions and the Ks; with
    sharded=True every rank must call this (each encodes a share)."""
    shard = (0, 1)
    if sharded:
        from clip.parallel import distributed

        shard = (distributed.get_rank(), distributed.get_world_size())
    images, texts, owner = encode_source(model, source, image_size, batch_size, shard)
    result = recall_at_k(images @ texts.T, owner, ks)
    result.update({"images": int(images.shape[0]), "captions": int(texts.shape[0]), "recall_k": list(ks)})
    return result
