"""Embeddings from a model, batch by batch, numpy in and numpy out: what zero-shot, retrieval and prediction
share. Compiled (ms.jit) encoders are used where there are enough batches to pay for the compilation."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from launcher import worker

# Compiling (ms.jit) costs a fixed time once, then every batch runs faster than in PYNATIVE: worth it from this
# many batches on (docs/evaluation.md).
COMPILE_MIN_BATCHES = 4


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def worth_compiling(n_items: int, batch_size: int) -> bool:
    return n_items >= COMPILE_MIN_BATCHES * batch_size


def encoder(model, tower: str, compiled: bool):
    """model.encode_image / encode_text, or a freshly ms.jit-compiled form of it. Compiled graphs are not
    kept between evaluations: a graph does not see later `Parameter.set_data` (checkpoint loads)."""
    method = model.encode_image if tower == "image" else model.encode_text
    if not compiled:
        return method
    import mindspore as ms

    def run(x):
        return method(x)

    return ms.jit(run)


def encode_in_batches(encode, array: np.ndarray, batch_size: int, pad: bool = False) -> np.ndarray:
    """encode(ms.Tensor) -> features, applied batch by batch; numpy in, numpy out. pad=True fills the last
    batch up to batch_size (a compiled encoder then sees one shape only) and drops the padding after."""
    import mindspore as ms

    out = []
    for start in range(0, len(array), batch_size):
        chunk = np.ascontiguousarray(array[start:start + batch_size])
        real = len(chunk)
        if pad and real < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - real,) + chunk.shape[1:], chunk.dtype)])
        out.append(encode(ms.Tensor(chunk)).asnumpy()[:real])
        worker.heartbeat()  # evaluation shows the launcher it is alive, batch by batch
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def encode_images(model, pixels: np.ndarray, batch_size: int, compiled: bool = False) -> np.ndarray:
    """Unnormalised image embeddings [N, E] of preprocessed pixels [N, 3, H, W]."""
    return encode_in_batches(encoder(model, "image", compiled), pixels.astype(np.float32, copy=False),
                             batch_size, pad=compiled)


def encode_texts(model, texts: Sequence[str], batch_size: int = 256, compiled: Optional[bool] = None) -> np.ndarray:
    """Unnormalised text embeddings [N, E] for a list of strings (compiled by default when there are many)."""
    from clip.model.hf_tokenizer import tokenizer_of

    if compiled is None:
        compiled = worth_compiling(len(texts), batch_size)
    tokens = tokenizer_of(model)(list(texts))
    if model.config.trims_padding:  # not SigLIP's towers: no causal mask, pooled at the last position
        tokens = trim_padding(tokens)
    return encode_in_batches(encoder(model, "text", compiled), tokens, batch_size, pad=compiled)


def trim_padding(tokens: np.ndarray) -> np.ndarray:
    """Drop the pad columns after the longest sequence's end token. With the causal mask and pooling at the
    end token, positions after it never reach the output, so the embeddings are unchanged while prompts
    (~10 tokens of 77) cost a fraction of the compute; models without both (CLIPConfig.trims_padding) are
    given whole rows."""
    used = np.nonzero(tokens.any(axis=0))[0]
    return np.ascontiguousarray(tokens[:, :used[-1] + 1]) if used.size else tokens
