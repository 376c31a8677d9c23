"""Resizing the image tower's position embeddings to another patch grid, as open_clip's `resize_pos_embed`
does (torch `interpolate(mode="bicubic", antialias=True, align_corners=False)` on the grid, class token kept),
in numpy, so that a model fine-tuned or evaluated at another resolution starts from the checkpoint's grid."""
import math

import numpy as np


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    # The antialiased bicubic filter (PIL's and torch's antialias path use a = -0.5).
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] resampling matrix of torch's separable antialiased bicubic."""
    scale = n_in / n_out
    support_scale = max(scale, 1.0)
    support = 2.0 * support_scale
    matrix = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = _cubic((j - center + 0.5) / support_scale)
        total = w.sum()
        matrix[i, lo:hi] = w / total if total != 0 else w
    return matrix


def resize(pos_embed: np.ndarray, new_grid: int, prefix_tokens: int = 1) -> np.ndarray:
    """[prefix + g*g, width] -> [prefix + new_grid**2, width]."""
    prefix, grid_part = pos_embed[:prefix_tokens], pos_embed[prefix_tokens:]
    old = math.isqrt(len(grid_part))
    if old * old != len(grid_part):
        raise ValueError(f"{len(grid_part)} grid positions is not a square")
    if old == new_grid:
        return pos_embed
    grid = grid_part.reshape(old, old, -1).astype(np.float64)
    m = _weights(old, new_grid)
    out = np.einsum("ij,jkc->ikc", m, grid)
    out = np.einsum("ij,kjc->kic", m, out)
    return np.concatenate([prefix, out.reshape(new_grid * new_grid, -1).astype(pos_embed.dtype)], axis=0)
