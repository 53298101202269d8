"""A streaming accumulator that spans one tile's height of rows by the scene's width.

Windows arrive in row-major order. Every window of a row of windows starts at
the same scene row, so when a window starts lower than the buffer's top, the
rows above it can receive no more contributions: they are final, turned into
labels (argmax, nodata where nothing valid contributed) and handed out, and
the buffer shifts up. Memory is ``classes x tile x width`` floats, whatever
the scene's height. The hot loops are in :mod:`segbench._native`.
"""

from __future__ import annotations

import numpy as np

from segbench import _native
from segbench.errors import EngineError
from segbench.raster import PROBABILITY_SCALE
from segbench.spec import IGNORE_INDEX
from segbench.tiler.windows import Window


class BandAccumulator:
    """Blend window outputs into the rows still open, and flush finished rows as labels.

    With ``labels=True`` windows carry uint8 labels instead of logits (engines
    exported with an argmax output, ``crop`` blending only): each pixel takes
    the label of the window whose weight there is positive.
    """

    def __init__(self, height: int, width: int, classes: int, tile: int, nodata: int = IGNORE_INDEX,
                 confidence: bool = False, labels: bool = False, threads: int = 0,
                 probabilities: bool = False, engine: str = "the engine") -> None:
        self.height, self.width, self.tile = height, width, tile
        self.engine = engine  # named when its logits are NaN or infinite
        self.nodata, self.confidence, self.labels = nodata, confidence, labels
        self.probabilities = probabilities
        self.threads = threads  # OpenMP threads of the native loops (0: all)
        rows = min(tile, height)
        if labels:
            self._labels = np.full((rows, width), nodata, np.uint8)
        else:
            self._acc = np.zeros((classes, rows, width), np.float32)
        self._wsum = np.zeros((rows, width), np.float32)
        self._valid = np.zeros((rows, width), bool)
        self.top = 0  # scene row of the buffer's first row

    def add(self, window: Window, output: np.ndarray, wy: np.ndarray, wx: np.ndarray,
            valid: np.ndarray) -> None:
        """Blend one window's output (logits (C, t, t) or labels (t, t)) with weights
        ``outer(wy, wx)`` (the window's row and column weight vectors, length t each)."""
        y, x, h, w = open_span(window, self.top, self._wsum.shape[0], self.height, self.width)
        if self.labels:
            weight = np.outer(wy[:h], wx[:w])
            take = weight > 0
            self._labels[y:y + h, x:x + w][take] = output[:h, :w][take]
            self._wsum[y:y + h, x:x + w] += weight
        else:
            blend(self._acc, self._wsum, output[:, :h, :w], wy[:h], wx[:w], y, x, self.threads,
                  self.engine, window)
        self._valid[y:y + h, x:x + w] |= valid[:h, :w]

    def flush(self, upto: int) -> tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None] | None:
        """Finish rows ``[top, upto)``: ``(row0, labels, confidence or None, probabilities or None)``."""
        n = min(upto, self.height) - self.top
        if n <= 0:
            return None
        row0 = self.top
        conf = probs = None
        if self.labels:
            labels = np.where(self._valid[:n] & (self._wsum[:n] > 0), self._labels[:n], self.nodata)
            labels = labels.astype(np.uint8)
            self._shift(self._labels, n, self.nodata)
        else:
            result = _native.argmax_labels(self._acc, self._wsum, n, self._valid, self.nodata,
                                           self.confidence, self.threads)
            labels, conf = result if self.confidence else (result, None)
            if self.probabilities:
                probs = class_probabilities(self._acc, self._wsum, n, labels != self.nodata)
            self._shift(self._acc, n, 0)
        self._shift(self._wsum, n, 0)
        self._shift(self._valid, n, False)
        self.top += n
        return row0, labels, conf, probs

    def finish(self) -> tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None] | None:
        """Flush every remaining row."""
        return self.flush(self.height)

    @staticmethod
    def _shift(buf: np.ndarray, n: int, fill) -> None:
        """Move rows n.. of the (last-but-one axis) buffer up by n and clear the tail."""
        rows = buf.shape[-2]
        if n >= rows:
            buf[...] = fill
            return
        buf[..., : rows - n, :] = buf[..., n:, :]
        buf[..., rows - n:, :] = fill


def blend(acc: np.ndarray, wsum: np.ndarray, logits: np.ndarray, wy: np.ndarray, wx: np.ndarray,
          y: int, x: int, threads: int, engine: str, window: Window) -> None:
    """``_native.accumulate``; NaN or infinite logits are one sentence naming the engine and the window
    (argmax and softmax have no answer for them, and no label is guessed)."""
    try:
        _native.accumulate(acc, wsum, logits, wy, wx, y, x, threads)
    except _native.NonFiniteError:
        raise non_finite(engine, window) from None


def tile_labels(logits: np.ndarray) -> np.ndarray:
    """Each tile's labels, ``(N, C, H, W)`` float32 logits -> ``(N, H, W)`` uint8: the native argmax
    over classes (the first maximum wins, as numpy's; the GIL released). 8 tiles of 6 classes at 256:
    0.8 ms against numpy's ``argmax(1)`` 13 ms (benchmarks/bench_sut_overheads.py), which the dynamic
    batcher's worker paid beside the engine on every batch. Other dtypes or layouts take numpy's."""
    if logits.dtype != np.float32 or logits.ndim != 4 or not logits.flags.c_contiguous:
        return logits.argmax(1).astype(np.uint8)
    n, _, h, w = logits.shape
    everywhere = np.ones((h, w), np.float32)  # every pixel has a weight: no nodata
    return np.stack([_native.argmax_labels(tile, everywhere, h, None, IGNORE_INDEX, False, 1)
                     for tile in logits]) if n else np.zeros((0, h, w), np.uint8)


def non_finite(engine: str, window: Window, exact: bool = True) -> EngineError:
    """The sentence for NaN or infinite logits in ``window`` (``exact=False``: in it or a later one)."""
    where = "the window" if exact else "the windows from the one"
    return EngineError(f"{engine} returned NaN or infinite logits for {where} at row {window.row}, "
                       f"column {window.col}; the engine (or its graph) is broken there, so no labels "
                       "were written.")


def open_span(window: Window, top: int, rows: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Where ``window`` falls in a band of ``rows`` open rows from scene row ``top``, in a scene of
    ``height`` x ``width``: ``(y, x, h, w)``, the part inside the scene; ValueError outside the band."""
    y = window.row - top
    h = min(window.height, height - window.row)
    w = min(window.width, width - window.col)
    if y < 0 or y + h > rows:
        raise ValueError(f"window at row {window.row} is outside the open rows from {top}")
    return y, window.col, h, w


#: columns turned into probabilities at once (bounds the float temporaries on wide scenes)
PROBABILITY_COLUMNS = 2048


def class_probabilities(acc: np.ndarray, wsum: np.ndarray, rows: int, valid: np.ndarray) -> np.ndarray:
    """uint8 ``(classes, rows, width)``: the softmax of the blended logits ``acc / wsum`` of the
    first ``rows`` rows, as ``round(254 p)``; IGNORE_INDEX (255) where ``valid`` is False."""
    classes, _, width = acc.shape
    out = np.full((classes, rows, width), IGNORE_INDEX, np.uint8)
    for x0 in range(0, width, PROBABILITY_COLUMNS):
        x1 = min(x0 + PROBABILITY_COLUMNS, width)
        ok = valid[:rows, x0:x1]
        logits = acc[:, :rows, x0:x1] / np.where(ok, wsum[:rows, x0:x1], 1)
        logits -= logits.max(axis=0)
        p = np.exp(logits)
        p /= p.sum(axis=0)
        out[:, :rows, x0:x1] = np.where(ok, np.rint(PROBABILITY_SCALE * p), IGNORE_INDEX).astype(np.uint8)
    return out
