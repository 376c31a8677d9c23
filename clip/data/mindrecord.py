"""MindRecord directories written by `python -m clip.data.pack`, read natively by mindspore.dataset.MindDataset.

A packed directory holds `part-00000.mindrecord` (+ its `.db` index) ... and `manifest.json`, written last,
listing every shard with its sample range, size and content digest, plus the samples found unreadable
while packing. Each record keeps the source's own encoded image bytes, so a packed copy decodes to the same
pixels as the source. Training reads the rank's samples in the pipeline's order through a SubsetSampler;
the skip-and-replace rule is applied up front from the manifest's list of unreadable samples, so the
batches equal those of the source the directory was packed from.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

import numpy as np
from PIL import Image

from clip.data.base import CaptionSource, DatasetConfig, UnreadableImage, decode_image, require_dir
from launcher.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "clip-mindrecord"
VERSION = 1
SCHEMA = {"index": {"type": "int64"}, "name": {"type": "string"}, "image": {"type": "bytes"},
          "captions": {"type": "string"}, "ok": {"type": "int32"}}


def shard_file(k: int) -> str:
    return f"part-{k:05d}.mindrecord"


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"key {next(k for k in keys if keys.count(k) > 1)!r} given twice")
    return dict(pairs)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**62


def manifest_problem(manifest: dict) -> Optional[str]:
    """The first field of a manifest that is not what `pack` writes, or None: shard names are exactly
    part-NNNNN.mindrecord (a name cannot lead out of the pack), counts are integers that add up, digests are
    SHA-256, unreadable samples lie inside the pack and are named by text."""
    samples, shards, unreadable = manifest.get("samples"), manifest.get("shards"), manifest.get("unreadable")
    if not _count(samples):
        return f"samples: {samples!r} is not a count"
    if not isinstance(shards, list) or not shards:
        return f"shards: {type(shards).__name__}, expected a non-empty list"
    first = 0
    for k, shard in enumerate(shards):
        if not isinstance(shard, dict):
            return f"shards[{k}]: {type(shard).__name__}, expected an object"
        if shard.get("file") != shard_file(k):
            return f"shards[{k}].file: {shard.get('file')!r}, expected {shard_file(k)!r}"
        for key in ("first", "samples", "bytes"):
            if not _count(shard.get(key)):
                return f"shards[{k}].{key}: {shard.get(key)!r} is not a count"
        if shard["first"] != first:
            return f"shards[{k}].first: {shard['first']}, expected {first} (where shard {k - 1} ends)"
        first += shard["samples"]
        digest = shard.get("sha256")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            return f"shards[{k}].sha256: {digest!r} is not a SHA-256 hex digest"
    if not isinstance(unreadable, list):
        return f"unreadable: {type(unreadable).__name__}, expected a list"
    for entry in unreadable:
        if not (isinstance(entry, list) and len(entry) == 2 and _count(entry[0]) and entry[0] < samples
                and isinstance(entry[1], str)):
            return f"unreadable: {entry!r} is not [index below {samples}, name]"
    return None


def read_manifest(root: str) -> dict:
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"data.path: {root!r} has no {MANIFEST} (not a finished pack; make one with "
                        f"python -m clip.data.pack SRC {root} --format mindrecord)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f, object_pairs_hook=_unique_keys)
        if not isinstance(manifest, dict):
            raise ValueError(f"a {type(manifest).__name__}, not an object")
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"format {manifest.get('format')!r} version {manifest.get('version')!r}")
        problem = manifest_problem(manifest)
        if problem:
            raise ValueError(problem)
        shards, samples = manifest["shards"], manifest["samples"]
        bad = {i: name for i, name in manifest["unreadable"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise UserError(f"{path}: not a {FORMAT} v{VERSION} manifest ({exc})") from None
    for shard in shards:
        for name in (shard["file"], shard["file"] + ".db"):
            full = os.path.join(root, name)
            if not os.path.isfile(full):
                raise UserError(f"{root}: MindRecord shard {name!r} is missing ({len(shards)} shards listed in "
                                f"{MANIFEST}); copy it back or repack")
        size = os.path.getsize(os.path.join(root, shard["file"]))
        if size != shard["bytes"]:
            raise UserError(f"{os.path.join(root, shard['file'])}: {size} bytes, {MANIFEST} says {shard['bytes']} "
                            f"(changed or truncated); repack")
    if sum(s["samples"] for s in shards) != samples:
        raise UserError(f"{path}: shard sample counts do not add up to {samples}")
    manifest["unreadable"] = bad
    return manifest


def replacements(indices: np.ndarray, bad: set[int], n: int, max_tries: int) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's skip-and-replace rule computed ahead: sample i -> first of i, i+1, ... (mod n) not in
    `bad`, and how many were skipped (-1 when `max_tries` in a row are bad)."""
    used = np.asarray(indices, np.int64).copy()
    failed = np.zeros(len(used), np.int32)
    if not bad:
        return used, failed
    for p, i in enumerate(used):
        for attempt in range(min(n, max_tries)):
            if (int(i) + attempt) % n not in bad:
                used[p], failed[p] = (int(i) + attempt) % n, attempt
                break
        else:
            failed[p] = -1
    return used, failed


class _Preprocess:
    """Record columns -> (pixels, tokens), the same decoding and transforms EpochSamples applies."""

    def __init__(self, image_size: int, context_length: int, epoch: int, seed: int, tokenizer=None,
                 preprocess: str = "openai"):
        self.image_size, self.context_length, self.epoch, self.seed = image_size, context_length, epoch, seed
        self.preprocess = preprocess  # CLIPConfig.preprocess
        self.tokenizer = tokenizer  # None = OpenAI's BPE
        self._transform = None

    def __getstate__(self):
        return {**self.__dict__, "_transform": None}

    def __call__(self, image, captions, index):
        import clip
        from clip.data.pipeline import caption_index

        index = int(index)
        try:
            img = decode_image(image.tobytes(), f"record {index}")
        except UnreadableImage as exc:  # verified when packed, so the file changed since
            log.error("MindRecord sample %d no longer decodes (%s); a black image is used", index, exc.reason)
            img = Image.new("RGB", (self.image_size, self.image_size))
        texts = json.loads(str(captions))
        caption = texts[caption_index(self.seed, index, self.epoch, len(texts))]
        if self._transform is None:
            self._transform = clip.image_transform(self.image_size, self.preprocess)
        pixels = np.asarray(self._transform(img), dtype=np.float32)
        tokens = (self.tokenizer([caption]) if self.tokenizer is not None else
                  clip.tokenize([caption], context_length=self.context_length))[0].astype(np.int32)
        return pixels, tokens


class MindRecordSource(CaptionSource):
    """A packed directory. Training goes through `ordered_dataset`; image()/captions() read single records
    (slow, for evaluation-style use)."""

    def __init__(self, root: str, manifest: dict):
        self.root = root
        self.files = [os.path.join(root, s["file"]) for s in manifest["shards"]]
        self.num_samples = int(manifest["samples"])
        self.unreadable = manifest["unreadable"]

    def __len__(self) -> int:
        return self.num_samples

    def name(self, i: int) -> str:
        return self.unreadable.get(i, f"record {i}")

    def _record(self, i: int) -> dict:
        import mindspore.dataset as ds

        data = ds.MindDataset(self.files, columns_list=["image", "captions", "ok"], sampler=ds.SubsetSampler([i]))
        return next(data.create_dict_iterator(output_numpy=True, num_epochs=1))

    def captions(self, i: int) -> list[str]:
        return json.loads(str(self._record(i)["captions"]))

    def image(self, i: int):
        if i in self.unreadable:
            raise UnreadableImage(self.unreadable[i], "marked unreadable when packed")
        return decode_image(self._record(i)["image"].tobytes(), self.name(i))

    def ordered_dataset(self, indices: np.ndarray, *, image_size: int, context_length: int, epoch: int,
                        seed: int, num_workers: int, max_tries: int, tokenizer=None, preprocess: str = "openai"):
        """A dataset of rows (images, tokens, unreadable, bad_index) for `indices` in this order."""
        import mindspore.dataset as ds

        used, failed = replacements(indices, set(self.unreadable), self.num_samples, max_tries)
        bad = np.where(failed != 0, indices, -1).astype(np.int32)
        records = ds.MindDataset(self.files, columns_list=["image", "captions", "index"],
                                 sampler=ds.SubsetSampler(used.tolist()))
        records = records.map(_Preprocess(image_size, context_length, epoch, seed, tokenizer, preprocess),
                              input_columns=["image", "captions", "index"], output_columns=["images", "tokens"],
                              num_parallel_workers=max(1, num_workers), python_multiprocessing=num_workers > 1)
        flags = ds.NumpySlicesDataset({"unreadable": failed, "bad_index": bad}, shuffle=False)
        return ds.zip((records, flags)).project(["images", "tokens", "unreadable", "bad_index"])


def load(cfg: DatasetConfig) -> MindRecordSource:
    """Training source: data.path is a directory written by clip.data.pack."""
    root = require_dir(cfg.path, "data.train.path (mindrecord)")
    return MindRecordSource(root, read_manifest(root))
