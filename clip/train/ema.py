"""Exponential moving average of the weights (`train.ema_decay: d`): after every applied optimiser step,
e <- d * e + (1 - d) * p, starting from the weights the run starts with.

The average is kept for the trainable parameters only: a locked parameter never changes, so its average is
itself and a copy would only cost memory. The averages are Parameters named `ema.<name>`, so a training
checkpoint stores them beside the raw weights and a resume restores them like the optimiser state.
Evaluation copies them into the model in place and the raw weights back afterwards (bytes copied, so they come
back exactly).
"""
from __future__ import annotations

import contextlib

import mindspore as ms
from mindspore import ParameterTuple, Tensor, nn, ops

from clip.model.weights import EMA_PREFIX as PREFIX


class EMA(nn.Cell):
    """Calling it applies one update; `swapped()` puts the averages into the model for the duration."""

    def __init__(self, params, decay: float):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(params)
        self.averages = self.params.clone(prefix=PREFIX, init="same")
        for average in self.averages:
            average.requires_grad = False
        self.decay = Tensor(decay, ms.float32)
        self.rest = Tensor(1.0 - decay, ms.float32)
        self.hyper_map = ops.HyperMap()
        self.assign = _Assign(self.params)

    def construct(self):
        return ops.depend(ops.zeros((), ms.float32),
                          self.hyper_map(ops.partial(_update, self.decay, self.rest), self.averages, self.params))

    def restart(self) -> None:
        """Averages equal to the current weights (a resume from a checkpoint written without EMA)."""
        for average, param in zip(self.averages, self.params):
            average.set_data(Tensor(param.asnumpy()))

    @contextlib.contextmanager
    def swapped(self):
        """The averages in the model's parameters meanwhile; the raw weights wait in host memory."""
        raw = tuple(Tensor(p.asnumpy().copy()) for p in self.params)
        self.assign(ms.mutable(tuple(self.averages)))
        try:
            yield
        finally:
            self.assign(ms.mutable(raw))


def _update(decay, rest, average, param):
    return ops.assign(average, average * decay + param * rest)


class _Assign(nn.Cell):
    """Write the given values into the parameters in place."""

    def __init__(self, params):
        super().__init__(auto_prefix=False)
        self.params = params
        self.hyper_map = ops.HyperMap()

    def construct(self, values):
        return ops.depend(ops.zeros((), ms.float32), self.hyper_map(ops.assign, self.params, values))
