"""Calibration sets: tiles drawn from scenes with :func:`segbench.raster.sample_tiles`.

Calibration scenes must never be the evaluation scenes; the digest of the
tiles identifies a calibration set in the spec of every engine built from it.
"""

from __future__ import annotations

import hashlib

import numpy as np


def tiles_digest(tiles: np.ndarray) -> str:
    """SHA-256 of a tile set, recorded in the spec of calibrated engines."""
    return hashlib.sha256(np.ascontiguousarray(tiles).tobytes()).hexdigest()
