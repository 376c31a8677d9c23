"""Patch dropout (FLIP): which patch tokens each training image keeps, drawn outside the compiled step.

The draw is a pure function of (seed, step, the sample's position in the global batch, patch index): a
counter-based hash, not a random stream. A rank computes only its own rows of the global batch, yet gets
exactly the rows one card with the whole batch would get, and a resumed run redraws the same subsets; no
generator state has to be stored, synchronised or restored. The vision tower gathers the kept tokens
(clip.model.towers.VisionTransformer); evaluation passes no indices and keeps every token.
"""
from __future__ import annotations

import numpy as np

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def keep_count(num_patches: int, prob: float) -> int:
    """Patch tokens kept out of `num_patches` at drop probability `prob`: open_clip's max(1, int(n (1 - p)))."""
    return max(1, int(num_patches * (1 - prob)))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit, so neighbouring counters look unrelated."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def keep_indices(seed: int, step: int, positions, num_patches: int, prob: float) -> np.ndarray:
    """int32 [len(positions), keep_count] patch indices (0 = the first patch, the class token not counted),
    ascending per row, for the samples at `positions` of global batch `step`."""
    positions = np.asarray(positions, np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
        key = _mix(_mix(np.uint64(seed) * _GOLDEN + np.uint64(step)) + _GOLDEN)
        row = _mix(key ^ (positions[:, None] * _GOLDEN))
        scores = _mix(row + np.arange(num_patches, dtype=np.uint64)[None, :] * _GOLDEN)
    kept = np.argsort(scores, axis=1, kind="stable")[:, :keep_count(num_patches, prob)]
    return np.sort(kept, axis=1).astype(np.int32)


def rank_positions(rank: int, per_rank: int) -> np.ndarray:
    """Positions in the global batch of this rank's rows: rank r owns rows r*per_rank.. (clip.data.pipeline)."""
    return np.arange(rank * per_rank, (rank + 1) * per_rank)
