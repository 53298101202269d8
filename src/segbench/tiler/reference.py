"""Pure numpy versions of the native hot loops: the test oracle, never used by the tiler."""

from __future__ import annotations

import numpy as np

from segbench.raster import CONFIDENCE_SCALE
from segbench.spec import IGNORE_INDEX


def accumulate(acc: np.ndarray, wsum: np.ndarray, logits: np.ndarray, wy: np.ndarray,
               wx: np.ndarray, y0: int, x0: int) -> None:
    weight = np.outer(wy, wx)
    h, w = weight.shape
    acc[:, y0:y0 + h, x0:x0 + w] += logits * weight
    wsum[y0:y0 + h, x0:x0 + w] += weight


def argmax_labels(acc: np.ndarray, wsum: np.ndarray, rows: int, valid: np.ndarray | None = None,
                  nodata: int = IGNORE_INDEX, confidence: bool = False):
    a = acc[:, :rows]
    ok = wsum[:rows] > 0
    if valid is not None:
        ok &= valid[:rows].astype(bool)
    labels = np.where(ok, a.argmax(0), nodata).astype(np.uint8)
    if not confidence:
        return labels
    mean = a / np.where(ok, wsum[:rows], 1)
    p = np.exp(mean - mean.max(0))
    conf = np.where(ok, np.rint(CONFIDENCE_SCALE / p.sum(0)), 0).astype(np.uint8)
    return labels, conf
