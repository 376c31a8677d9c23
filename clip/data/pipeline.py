"""Sharded, resumable training batches through mindspore.dataset.

The index plan is pure numpy and independent of the world size: epoch e visits the samples in the order
of one permutation drawn from (seed, e); global batch t is the slice [t*W*B, (t+1)*W*B) of it and rank r
takes the r-th block of B. So W=1,B=8 and W=2,B=4 train on the same samples at every step, and resuming
at step t only needs (epoch, t). The incomplete last global batch of an epoch is dropped.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Optional

import numpy as np
from PIL import Image

import clip
from clip.data.base import CaptionSource, UnreadableImage
from launcher.errors import UserError

log = logging.getLogger(__name__)

COLUMNS = ["images", "tokens", "unreadable", "bad_index"]
MAX_CONSECUTIVE_UNREADABLE = 32  # beyond this the data is broken (wrong path?), not a few bad files
GAVE_UP = -1  # value of the `unreadable` column when no readable replacement was found


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Full global batches in one epoch."""
    return num_samples // (batch_size * world_size)


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits all samples, the same on every rank."""
    return np.random.default_rng((seed, epoch)).permutation(num_samples)


def global_batch(num_samples: int, *, batch_size: int, world_size: int, epoch: int, seed: int,
                 step: int) -> np.ndarray:
    """Sample indices of global batch `step` of `epoch`, in rank order (rank r owns rows r*B..(r+1)*B-1)."""
    g = batch_size * world_size
    return epoch_order(num_samples, seed, epoch)[step * g:(step + 1) * g]


def shard_layout(num_samples: int, *, batch_size: int, world_size: int, epoch: int, seed: int,
                 start_step: int = 0) -> np.ndarray:
    """Indices laid out so that GeneratorDataset's interleaved sharding (position p -> shard p mod W)
    hands rank r exactly its contiguous block of every global batch, in order."""
    steps = steps_per_epoch(num_samples, batch_size, world_size)
    g = batch_size * world_size
    blocks = epoch_order(num_samples, seed, epoch)[start_step * g:steps * g]
    return blocks.reshape(-1, world_size, batch_size).transpose(0, 2, 1).reshape(-1)


def caption_index(seed: int, sample: int, epoch: int, num_captions: int) -> int:
    """Which of a sample's captions epoch `epoch` uses: a fresh generator per (seed, sample, epoch)."""
    return int(np.random.default_rng((seed, sample, epoch)).integers(num_captions))


class EpochSamples:
    """Random-access preprocessed samples of one epoch for GeneratorDataset (picklable for worker processes).

    An unreadable image is replaced by the next readable sample (index + 1, + 2, ... mod N), image and
    caption together, so batch shapes and cross-rank equivalence survive; the replacement is reported
    in the `unreadable` and `bad_index` columns because worker processes cannot update a shared counter.
    """

    def __init__(self, source: CaptionSource, layout: np.ndarray, *, image_size: int, context_length: int,
                 epoch: int, seed: int, tokenizer: Optional[Callable] = None, preprocess: str = "openai"):
        self.source = source
        self.layout = layout
        self.image_size = image_size
        self.preprocess = preprocess
        self.context_length = context_length
        self.tokenizer = tokenizer
        self.epoch = epoch
        self.seed = seed
        self._transform = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_transform"] = None
        return state

    def __len__(self) -> int:
        return len(self.layout)

    def _readable(self, index: int) -> tuple[Image.Image | None, int, int]:
        """(image, index actually used, failed loads) starting from `index`; (None, index, GAVE_UP) when
        MAX_CONSECUTIVE_UNREADABLE samples in a row (or all) are unreadable."""
        n = len(self.source)
        for attempt in range(min(n, MAX_CONSECUTIVE_UNREADABLE)):
            i = (index + attempt) % n
            try:
                return self.source.image(i), i, attempt
            except (UnreadableImage, OSError) as exc:
                reason = exc.reason if isinstance(exc, UnreadableImage) else str(exc)
                log.warning("unreadable image %s skipped (%s); trying sample %d", self.source.name(i), reason,
                            (i + 1) % n)
        return None, index, GAVE_UP

    def __getitem__(self, position: int):
        index = int(self.layout[position])
        img, used, failed = self._readable(index)
        if img is None:  # reported by TrainBatches in the main process, where a UserError stays clean
            img = Image.new("RGB", (self.image_size, self.image_size))
        elif isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        captions = self.source.captions(used)
        caption = captions[caption_index(self.seed, used, self.epoch, len(captions))]
        if self._transform is None:
            self._transform = clip.image_transform(self.image_size, self.preprocess)
        pixels = np.asarray(self._transform(img), dtype=np.float32)
        tokens = (self.tokenizer([caption]) if self.tokenizer is not None else
                  clip.tokenize([caption], context_length=self.context_length))[0].astype(np.int32)
        return (pixels, tokens, np.array(failed, dtype=np.int32),
                np.array(index if failed else -1, dtype=np.int32))


class TrainBatches:
    """This rank's batches for one epoch: iterate for (images float32 [B,3,S,S], tokens int32 [B,L]).

    `unreadable` counts images replaced so far on this rank and `unreadable_names` names them; the
    training loop can all-reduce the count for a global figure.
    """

    def __init__(self, dataset, num_steps: int, source: CaptionSource):
        self._dataset = dataset
        self.num_steps = num_steps
        self._source = source
        self.unreadable = 0
        self.unreadable_names: list[str] = []

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._dataset is None:
            return
        for images, tokens, failed, bad in self._dataset.create_tuple_iterator(output_numpy=True, num_epochs=1):
            if (failed == GAVE_UP).any():
                first = self._source.name(int(bad[failed == GAVE_UP][0]))
                raise UserError(f"data: no readable image among {min(len(self._source), MAX_CONSECUTIVE_UNREADABLE)} "
                                f"consecutive samples from {first!r}; check data.path and the image files")
            if failed.any():
                self.unreadable += int(failed.sum())
                self.unreadable_names.extend(self._source.name(int(i)) for i in bad[bad >= 0])
            yield images, tokens


def train_batches(source: CaptionSource, *, image_size: int, context_length: int, batch_size: int, rank: int,
                  world_size: int, epoch: int, seed: int, start_step: int = 0, num_workers: int = 1,
                  tokenizer: Optional[Callable] = None, preprocess: str = "openai") -> TrainBatches:
    """This rank's share of epoch `epoch` from global step `start_step` on, loaded by mindspore.dataset.

    num_workers > 1 decodes and preprocesses in that many worker processes; `preprocess` is the model's image
    preprocessing (CLIPConfig.preprocess). `tokenizer` (texts -> int32
    [n, context_length], picklable) is the model's when it is not OpenAI's BPE (clip.model.hf_tokenizer).
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad sharding: batch_size={batch_size}, rank={rank}, world_size={world_size}")
    steps = steps_per_epoch(len(source), batch_size, world_size)
    if steps == 0:
        raise UserError(f"data: {len(source)} samples are fewer than one global batch "
                        f"(train.batch_size {batch_size} x {world_size} ranks = {batch_size * world_size})")
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step {start_step} outside the epoch's {steps} steps")
    if start_step == steps:
        return TrainBatches(None, 0, source)

    import mindspore.dataset as ds

    layout = shard_layout(len(source), batch_size=batch_size, world_size=world_size, epoch=epoch, seed=seed,
                          start_step=start_step)
    ordered = getattr(source, "ordered_dataset", None)
    if ordered is not None:  # a format with its own reader (MindRecord): hand it this rank's indices in order
        dataset = ordered(layout[rank::world_size], image_size=image_size, context_length=context_length,
                          epoch=epoch, seed=seed, num_workers=num_workers, max_tries=MAX_CONSECUTIVE_UNREADABLE,
                          tokenizer=tokenizer, preprocess=preprocess)
        return TrainBatches(dataset.batch(batch_size, drop_remainder=True), steps - start_step, source)
    samples = EpochSamples(source, layout, image_size=image_size, context_length=context_length,
                           epoch=epoch, seed=seed, tokenizer=tokenizer, preprocess=preprocess)
    dataset = ds.GeneratorDataset(samples, COLUMNS, shuffle=False, num_shards=world_size, shard_id=rank,
                                  num_parallel_workers=max(1, num_workers),
                                  python_multiprocessing=num_workers > 1)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return TrainBatches(dataset, steps - start_step, source)
