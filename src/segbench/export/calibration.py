"""Calibration and verification tiles drawn from real scenes.

Tiles are stratified across scenes (the same count from each, at positions
spread over a regular grid with a seeded jitter) and a fixed total, so the
calibration set is reproducible and its digest identifies it. Calibration
scenes must never be the evaluation scenes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from segbench.raster import check_bands, open_raster, read_window, scene_info
from segbench.spec import ModelSpec


def sample_tiles(
    scenes: Sequence[str | os.PathLike[str]],
    spec: ModelSpec,
    count: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """``count`` raw-pixel tiles ``(count, bands, tile, tile)`` float32 from ``scenes``."""
    rng = np.random.default_rng(seed)
    per_scene = np.full(len(scenes), count // len(scenes))
    per_scene[: count % len(scenes)] += 1
    tiles = []
    for path, n in zip(scenes, per_scene, strict=True):
        with open_raster(path) as ds:
            info = scene_info(ds)
            check_bands(info, spec)
            for row, col in _positions(info.height, info.width, spec.tile, int(n), rng):
                pixels, _ = read_window(ds, row, col, spec.tile, spec.tile, spec.bands)
                tiles.append(pixels)
    return np.stack(tiles) if tiles else np.zeros((0, spec.num_bands, spec.tile, spec.tile), np.float32)


def _positions(height: int, width: int, tile: int, n: int, rng: np.random.Generator):
    """``n`` window origins spread over a grid covering the scene, with jitter."""
    if n <= 0:
        return []
    side = int(np.ceil(np.sqrt(n)))
    max_r, max_c = max(height - tile, 0), max(width - tile, 0)
    cells = [(i, j) for i in range(side) for j in range(side)]
    chosen = rng.permutation(len(cells))[:n]
    out = []
    for k in chosen:
        i, j = cells[k]
        r = int((i + rng.random()) / side * max_r) if max_r else 0
        c = int((j + rng.random()) / side * max_c) if max_c else 0
        out.append((r, c))
    return out


def tiles_digest(tiles: np.ndarray) -> str:
    """SHA-256 of a tile set, recorded in the spec of calibrated engines."""
    return hashlib.sha256(np.ascontiguousarray(tiles).tobytes()).hexdigest()
