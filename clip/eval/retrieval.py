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


def encode_source(model, source, image_size: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised image features [I, E], caption features [T, E] and the caption->image index [T]."""
    from clip.data.base import UnreadableImage
    from clip.eval.encode import encode_in_batches, encode_texts, encoder, l2_normalize, worth_compiling
    from clip.model.transforms import image_transform

    transform = image_transform(image_size)
    compiled = worth_compiling(len(source), batch_size)
    encode = encoder(model, "image", compiled)
    pending, captions, image_features = [], [], []
    for i in range(len(source)):
        try:
            image = source.image(i)
        except UnreadableImage as exc:
            log.warning("skipping unreadable image %s", exc)
            continue
        pending.append(transform(image))
        captions.append(source.captions(i))
        if len(pending) == batch_size:
            image_features.append(encode_in_batches(encode, np.stack(pending), batch_size, pad=compiled))
            pending = []
    if pending:
        image_features.append(encode_in_batches(encode, np.stack(pending), batch_size, pad=compiled))
    if not image_features:
        raise UserError("retrieval: the dataset has no readable images")
    texts, owner = flatten_captions(captions)
    image_features = np.concatenate(image_features)
    text_features = encode_texts(model, texts, batch_size)
    return l2_normalize(image_features), l2_normalize(text_features), owner


def evaluate_captions(model, source, image_size: int, batch_size: int, ks: Sequence[int] = KS) -> dict:
    """Recall@K both ways on a CaptionSource, plus the number of images and captions and the Ks."""
    images, texts, owner = encode_source(model, source, image_size, batch_size)
    result = recall_at_k(images @ texts.T, owner, ks)
    result.update({"images": int(images.shape[0]), "captions": int(texts.shape[0]), "recall_k": list(ks)})
    return result
