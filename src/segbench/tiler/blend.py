"""Blending weights for overlapping windows, separable per axis.

We blend **logits**, never probabilities, in every mode: it is what mmseg's
``slide_inference`` averages (so ``mean`` reproduces it exactly), it costs no
softmax per window, and the argmax of a positively weighted mean of logits
is what every mode needs.

* ``mean``: every pixel of every window weighs 1 (mmseg's averaging).
* ``cosine``: a Hann ramp across the actual overlap with the previous and the
  next window along each axis, 1 elsewhere and on the scene's outer border;
  never zero, so every pixel keeps a positive weight.
* ``crop``: each pixel is taken from the window in which it is most central:
  a window owns the span between the midpoints of its overlaps with its
  neighbours; weights are 1 there and 0 elsewhere, and every scene pixel is
  owned by exactly one window.
"""

from __future__ import annotations

import numpy as np

from segbench.errors import InputError

BLENDS = ("mean", "cosine", "crop")


def axis_weights(starts: list[int], tile: int, size: int, mode: str) -> list[np.ndarray]:
    """One 1-D weight vector (length ``tile``) per window origin along an axis."""
    if mode not in BLENDS:
        raise InputError(f"Unknown blend {mode!r}; use one of {', '.join(BLENDS)}.")
    out = []
    for i, start in enumerate(starts):
        w = np.ones(tile, np.float32)
        prev_end = starts[i - 1] + tile if i > 0 else None
        next_start = starts[i + 1] if i + 1 < len(starts) else None
        if mode == "cosine":
            if prev_end is not None and prev_end > start:
                n = prev_end - start
                w[:n] = _hann_ramp(n)
            if next_start is not None and start + tile > next_start:
                n = start + tile - next_start
                w[tile - n:] = np.minimum(w[tile - n:], _hann_ramp(n)[::-1])
        elif mode == "crop":
            lo = 0 if prev_end is None else max((start + prev_end) // 2 - start, 0)
            hi = tile if next_start is None else min((next_start + start + tile) // 2 - start, tile)
            w[:] = 0
            w[lo:hi] = 1
        out.append(w)
    return out


def _hann_ramp(n: int) -> np.ndarray:
    """Rising half of a Hann window over ``n`` samples, strictly between 0 and 1."""
    k = np.arange(n, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / n)).astype(np.float32)
