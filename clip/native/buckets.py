"""Bucketed gradient all-reduce: a few large collectives per step instead of one per parameter.

MindSpore's `nn.DistributedGradReducer` issues one AllReduce per gradient tensor; on CPU (loopback TCP,
no all-reduce fusion pass) that is ~150 round trips per step for CLIP and dominated the step of small
models on 2 ranks. Like torch's DDP buckets, `BucketedGradReducer` flattens the gradients into a few
contiguous float32 buffers of about `bucket_mb` each, all-reduces each buffer once, scales by 1/W and
slices it back. Every element goes through the same float32 sum and the same multiplication by the
float32 1/W as in `nn.DistributedGradReducer`, so the result is bit-identical to it.

The token embedding's gradient is zero outside the rows the step's tokens index (most of a 49408-row table
at small batches: 84% of clip_tiny's gradient bytes). When the step's W x B x L token ids are fewer than the
table's rows, the reducer all-gathers the ids and all-reduces only those rows, then scatters them into a
zero table: the same sums of the same values, on a few rows instead of the whole table. The rows travel in
one all-reduce with the buckets either side of the table, since every collective has a fixed cost on top
of its bytes on the CPU backend (bench/bench_collectives.py). With more ids than rows (large batches) it
all-reduces the table as before, in a bucket of its own.
"""
from __future__ import annotations

from typing import Optional, Sequence

import mindspore as ms
from mindspore import Tensor, nn, ops

DEFAULT_BUCKET_MB = 32.0


def rows_are_fewer(world_size: int, token_shape: Sequence[int], vocab_size: int) -> bool:
    """Whether all-reducing the embedding rows the step's tokens index moves less than the whole table."""
    n = world_size
    for d in token_shape:
        n *= d
    return n < vocab_size


def plan_buckets(sizes: Sequence[int], bucket_bytes: int, itemsize: int = 4,
                 alone: int = -1) -> list[tuple[int, int]]:
    """Group parameters into buckets of at most ``bucket_bytes`` (a larger tensor gets its own, and so does
    parameter ``alone``), as half-open index ranges ``(lo, hi)``.

    Buckets are filled from the last parameter to the first, the order in which backward produces the
    gradients (as DDP does); each bucket is a contiguous range, so the step selects it with one tuple slice.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[tuple[int, int]] = []
    hi = len(sizes)
    filled = 0
    for index in reversed(range(len(sizes))):
        nbytes = sizes[index] * itemsize
        if index + 1 < hi and (filled + nbytes > bucket_bytes or alone in (index, index + 1)):
            buckets.append((index + 1, hi))
            hi, filled = index + 1, 0
        filled += nbytes
    if hi > 0:
        buckets.append((0, hi))
    return buckets


def merge_around(ranges: Sequence[tuple[int, int]], alone: int) -> tuple[list[tuple[tuple[int, int], ...]], int]:
    """The all-reduces when parameter ``alone`` travels as rows: each bucket of ``ranges`` alone, except that
    the buckets either side of ``alone``'s own become one group, which the rows join; ``alone``'s bucket is
    left out. Returns the groups, in the order of ``ranges``, and the index of the group the rows join."""
    own = ranges.index((alone, alone + 1))
    neighbours = tuple(ranges[i] for i in (own - 1, own + 1) if 0 <= i < len(ranges))
    before = [(r,) for r in ranges[:max(own - 1, 0)]]
    return before + [neighbours] + [(r,) for r in ranges[own + 2:]], len(before)


def layout(groups: Sequence[Sequence[tuple[int, int]]], sizes: Sequence[int]) -> tuple[list[int], list[int]]:
    """Where each parameter sits: (its group, its start in that group's flat buffer); a parameter in no group
    gets group -1."""
    group_of, starts = [-1] * len(sizes), [0] * len(sizes)
    for g, group in enumerate(groups):
        offset = 0
        for lo, hi in group:
            for index in range(lo, hi):
                group_of[index], starts[index] = g, offset
                offset += sizes[index]
    return group_of, starts


class BucketedGradReducer(nn.Cell):
    """Mean all-reduce of a gradient tuple in a few flat buckets; same call and result as
    ``nn.DistributedGradReducer(params, mean=True, degree=W, group=group)``.

    Called as ``reducer(grads, tokens)``, the parameter named ``embedding`` (an embedding table indexed by
    ``tokens``) travels as its indexed rows when those are fewer than its rows (see the module docstring).
    """

    def __init__(self, parameters, degree: int, group: str, bucket_mb: float = DEFAULT_BUCKET_MB,
                 embedding: Optional[str] = None, transport=None):
        super().__init__(auto_prefix=False)
        sizes = [_numel(p.shape) for p in parameters]
        names = [p.name for p in parameters]
        self.embedding = names.index(embedding) if embedding in names else -1
        self.vocab_size = parameters[self.embedding].shape[0] if self.embedding >= 0 else 0
        self.degree = degree
        # The embedding gets a bucket of its own: the whole table travels alone, its rows with its neighbours.
        self.ranges = tuple(plan_buckets(sizes, int(bucket_mb * 2 ** 20), alone=self.embedding))
        # Where each gradient sits: its bucket and its [start, end) in that bucket's flat buffer.
        bucket_of, starts = layout([(r,) for r in self.ranges], sizes)
        self.bucket_of, self.starts = tuple(bucket_of), tuple(starts)
        self.ends = tuple(start + size for start, size in zip(starts, sizes))
        # When the rows travel: the groups of buckets, one all-reduce each, the rows appended to the group of
        # the embedding's neighbours; the embedding's scattered table is then the buffer after the groups.
        self.row_groups, self.rows_group, self.rows_start = (), 0, 0
        self.row_group_of, self.row_starts, self.row_ends = self.bucket_of, self.starts, self.ends
        if self.embedding >= 0:
            groups, self.rows_group = merge_around(self.ranges, self.embedding)
            group_of, starts = layout(groups, sizes)
            self.rows_start = sum(sum(sizes[lo:hi]) for lo, hi in groups[self.rows_group])
            group_of[self.embedding], starts[self.embedding] = len(groups), _WHOLE
            self.row_groups = tuple(groups)
            self.row_group_of, self.row_starts = tuple(group_of), tuple(starts)
            self.row_ends = tuple(start + size for start, size in zip(starts, sizes))  # unused for _WHOLE
        self.scale = Tensor(1.0 / degree, ms.float32)
        # A transport (clip.shm_collectives) runs outside MindSpore's collectives, so the graph orders its
        # calls: the first waits for every gradient (so for every collective of the forward and backward) and
        # each waits for the one before, so all ranks make them in one order.
        self.serial = transport is not None
        self.all_reduce = transport.all_reduce if self.serial else ops.AllReduce("sum", group)
        self.all_gather = transport.all_gather if self.serial else ops.AllGather(group)
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, tokens=None):
        # HyperMap and tuple slices only: MindSpore 2.10 type-infers a list comprehension over ~100 tensors
        # in seconds (measured on clip_tiny's 62 gradients: 4.4 s for comprehensions, 0.6 s like this).
        flats = self.hyper_map(_flatten, grads)
        by_rows = (tokens is not None and self.embedding >= 0
                   and rows_are_fewer(self.degree, tokens.shape, self.vocab_size))
        if by_rows:
            return self.reduce_with_rows(grads, flats, tokens)
        buffers, after = (), grads
        for lo, hi in self.ranges:
            summed = self._collective(self.all_reduce, ops.concat(flats[lo:hi]), after)
            buffers, after = buffers + (summed * self.scale,), summed
        return self.hyper_map(ops.partial(_restore, buffers), self.bucket_of, self.starts, self.ends, grads)

    def reduce_with_rows(self, grads, flats, tokens):
        """The mean gradients with the embedding's from the rows every rank's tokens index, which travel with
        the buckets either side of it."""
        grad = grads[self.embedding]
        ids = self._collective(self.all_gather, tokens.reshape(-1).astype(ms.int32), grads)
        rows = ops.gather(grad.astype(ms.float32), ids, 0)
        buffers, after = (), ids
        for g, group in enumerate(self.row_groups):
            parts = ()
            for lo, hi in group:
                parts = parts + flats[lo:hi]
            if g == self.rows_group:
                parts = parts + (rows.reshape(-1),)
            summed = self._collective(self.all_reduce, ops.concat(parts), after)
            buffers, after = buffers + (summed * self.scale,), summed
        summed = buffers[self.rows_group][self.rows_start:].reshape(rows.shape)
        # A repeated id scatters the same summed row each time.
        table = ops.tensor_scatter_update(ops.zeros(grad.shape, ms.float32), ids.reshape(-1, 1), summed)
        buffers = buffers + (table,)
        return self.hyper_map(ops.partial(_restore, buffers), self.row_group_of, self.row_starts, self.row_ends,
                              grads)

    def _collective(self, op, x, after):
        if self.serial:
            x = ops.depend(x, after)
        return op(x)


_flatten = ops.MultitypeFuncGraph("flatten")
_restore = ops.MultitypeFuncGraph("restore")


@_flatten.register("Tensor")
def _flatten_tensor(grad):
    return grad.reshape(-1).astype(ms.float32)


_WHOLE = -1  # a start that means: the buffer is this gradient, in its own shape (no slice, no copy)


@_restore.register("Tuple", "Number", "Number", "Number", "Tensor")
def _restore_tensor(buffers, bucket, start, end, grad):
    if start == _WHOLE:
        return buffers[bucket].astype(grad.dtype)
    return buffers[bucket][start:end].reshape(grad.shape).astype(grad.dtype)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
