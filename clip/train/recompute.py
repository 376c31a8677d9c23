"""Activation recompute (`model.recompute`): residual blocks whose activations are recomputed in the backward
pass instead of stored (MindSpore's `Cell.recompute()`), so a card fits a larger batch at some extra compute.
Gradients are unchanged (tests/test_accumulate.py)."""
from __future__ import annotations

from typing import Union


def blocks_to_recompute(setting: Union[bool, int], layers: int) -> int:
    """How many of a tower's `layers` residual blocks (the first ones) to recompute: all for true, none for
    false, else the first `setting` (at most all of them)."""
    if isinstance(setting, bool):
        return layers if setting else 0
    return min(setting, layers)


def recompute_blocks(model, setting: Union[bool, int]) -> int:
    """Mark the first blocks of both towers for recompute; returns how many were marked in total."""
    marked = 0
    for transformer in (model.visual.transformer, model.transformer):
        blocks = transformer.resblocks
        for block in list(blocks)[:blocks_to_recompute(setting, len(blocks))]:
            block.recompute()
            marked += 1
    return marked
