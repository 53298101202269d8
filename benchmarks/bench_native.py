"""Native hot loops of the tiler against their numpy versions (target: >= 3x each).

Realistic sizes: 6 classes, 512x512 windows accumulated into a 640-row band
buffer of a 10,000-pixel-wide scene; argmax over a 512-row band. Prints the
median of several repeats, measured in one run so the ratio is meaningful on
a noisy machine. The native loops run on one thread (as the tiler runs them
beside a CPU engine) and on every core (beside a GPU engine); numpy uses one.
"""

from __future__ import annotations

import os
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
    wy, wx = rng.random(TILE).astype(np.float32), rng.random(TILE).astype(np.float32)
    cols = list(range(0, WIDTH - TILE, 384))
    cores = os.cpu_count() or 1

    def compare(label, numpy_fn, native_fn):
        t_numpy = median_seconds(numpy_fn)
        line = f"{label:34s} numpy {t_numpy * 1e3:8.1f} ms"
        for threads, name in ((1, "1 thread"), (0, f"{cores} threads")):
            t_native = median_seconds(lambda t=threads: native_fn(t))
            line += f"   native {name} {t_native * 1e3:7.1f} ms ({t_numpy / t_native:4.1f}x)"
        print(line)

    compare(f"accumulate {len(cols)} windows {CLASSES}x{TILE}^2",
            lambda: [reference.accumulate(acc, wsum, logits, wy, wx, 64, c) for c in cols],
            lambda t: [_native.accumulate(acc, wsum, logits, wy, wx, 64, c, t) for c in cols])

    acc[:] = rng.normal(size=acc.shape)
    wsum[:] = 1
    valid = rng.random((BAND, WIDTH)) > 0.01
    rows = TILE
    compare(f"argmax {rows} x {WIDTH} px",
            lambda: reference.argmax_labels(acc, wsum, rows, valid, 255),
            lambda t: _native.argmax_labels(acc, wsum, rows, valid, 255, False, t))
    compare(f"argmax+confidence {rows} x {WIDTH} px",
            lambda: reference.argmax_labels(acc, wsum, rows, valid, 255, True),
            lambda t: _native.argmax_labels(acc, wsum, rows, valid, 255, True, t))


if __name__ == "__main__":
    main()
