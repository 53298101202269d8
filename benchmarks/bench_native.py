"""Native hot loops of the tiler against their numpy versions (target: >= 3x each).

Realistic sizes: 6 classes, 512x512 windows accumulated into a 640-row band
buffer of a 10,000-pixel-wide scene; argmax over a 512-row band. Prints the
median of several repeats, measured in one run so the ratio is meaningful on
a noisy machine.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from segbench import _native
from segbench.tiler import reference

CLASSES, TILE, WIDTH, BAND = 6, 512, 10_000, 640
REPEATS = 7


def median_seconds(fn, repeats: int = REPEATS) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    rng = np.random.default_rng(0)
    acc = np.zeros((CLASSES, BAND, WIDTH), np.float32)
    wsum = np.zeros((BAND, WIDTH), np.float32)
    logits = rng.normal(size=(CLASSES, TILE, TILE)).astype(np.float32)
    weight = rng.random((TILE, TILE)).astype(np.float32)
    cols = list(range(0, WIDTH - TILE, 384))

    def windows(impl):
        return lambda: [impl(acc, wsum, logits, weight, 64, c) for c in cols]

    t_native = median_seconds(windows(_native.accumulate))
    t_numpy = median_seconds(windows(reference.accumulate))
    print(f"accumulate  {len(cols)} windows of {CLASSES}x{TILE}x{TILE}: native {t_native * 1e3:8.1f} ms"
          f"   numpy {t_numpy * 1e3:8.1f} ms   speed-up {t_numpy / t_native:5.1f}x")

    acc[:] = rng.normal(size=acc.shape)
    wsum[:] = 1
    valid = rng.random((BAND, WIDTH)) > 0.01
    rows = TILE
    t_native = median_seconds(lambda: _native.argmax_labels(acc, wsum, rows, valid, 255))
    t_numpy = median_seconds(lambda: reference.argmax_labels(acc, wsum, rows, valid, 255))
    print(f"argmax      {rows} x {WIDTH} px, {CLASSES} classes:        native {t_native * 1e3:8.1f} ms"
          f"   numpy {t_numpy * 1e3:8.1f} ms   speed-up {t_numpy / t_native:5.1f}x")
    t_native = median_seconds(lambda: _native.argmax_labels(acc, wsum, rows, valid, 255, True))
    t_numpy = median_seconds(lambda: reference.argmax_labels(acc, wsum, rows, valid, 255, True))
    print(f"argmax+conf {rows} x {WIDTH} px, {CLASSES} classes:        native {t_native * 1e3:8.1f} ms"
          f"   numpy {t_numpy * 1e3:8.1f} ms   speed-up {t_numpy / t_native:5.1f}x")


if __name__ == "__main__":
    main()
