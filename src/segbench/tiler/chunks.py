"""A scene in chunks: rectangles segmented one by one, with the labels of the whole-scene run.

The window plan and the blending weights are the whole scene's, made exactly
as :func:`segbench.tiler.segment` makes them. A chunk runs every window that
touches it, in plan order, and blends only into its own pixels: each pixel
receives the same contributions in the same order as in the streaming
accumulator (the same native loops), so its label is the same whenever the
engine returns the same logits for the same window. Memory is bounded by the
chunk (``classes x height x width`` floats), not the scene. Windows that
straddle a chunk border run once for each chunk they touch, so larger chunks
waste less: at tile 512, stride 384 a 4096^2 chunk runs about 1.3x the
windows it owns.

Chunks are aligned to the label raster's blocks, so each one writes whole
blocks.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator

import numpy as np

from segbench import _native
from segbench.engines.base import Engine
from segbench.errors import InputError
from segbench.raster import (
    LABEL_BLOCK,
    LABEL_NODATA,
    check_bands,
    inside,
    open_raster,
    read_window,
    scene_info,
)
from segbench.tiler.accumulate import blend
from segbench.tiler.blend import axis_weights
from segbench.tiler.windows import Window, axis_starts

#: the default chunk side in pixels (a multiple of the label blocks)
CHUNK = 4096


#: a chunk is a window of the scene (one value type: segbench.tiler.windows.Window)
Chunk = Window


def chunk_side(size: int = CHUNK) -> int:
    """The side of the chunks planned for ``size``: rounded down to whole label blocks."""
    if size < LABEL_BLOCK:
        raise InputError(f"The chunk size must be at least {LABEL_BLOCK} pixels, not {size}.")
    return size - size % LABEL_BLOCK


def plan_chunks(height: int, width: int, size: int = CHUNK) -> list[Chunk]:
    """Row-major chunks of ``size`` (rounded down to whole label blocks) covering the scene."""
    size = chunk_side(size)
    return [Chunk(r, c, min(size, height - r), min(size, width - c))
            for r in range(0, height, size) for c in range(0, width, size)]


def segment_chunk(engine: Engine, scene: str | os.PathLike[str], chunk: Chunk, *, step: int,
                  blend: str = "cosine", batch: int = 4, nodata: float | None = None,
                  aoi: dict | None = None) -> np.ndarray:
    """The uint8 labels of ``chunk`` of ``scene`` (``(chunk.height, chunk.width)``).

    ``step`` is the stride the whole scene is planned with; ``nodata``
    overrides the scene's nodata value; ``aoi`` is a GeoJSON geometry in the
    scene's CRS (pixels outside it are nodata). Engines that output logits only.
    """
    spec = engine.spec
    if spec.output == "labels":
        raise InputError("This engine outputs labels; chunks blend logits, so export it with logits.")
    tile = spec.tile
    with open_raster(scene) as ds:
        info = scene_info(ds)
        check_bands(info, spec)
        rows, cols = axis_starts(info.height, tile, step), axis_starts(info.width, tile, step)
        wy = axis_weights(rows, tile, info.height, blend)
        wx = axis_weights(cols, tile, info.width, blend)
        touching_rows = [i for i, r in enumerate(rows) if chunk.row - tile < r < chunk.row + chunk.height]
        touching_cols = [j for j, c in enumerate(cols) if chunk.col - tile < c < chunk.col + chunk.width]
        acc = np.zeros((spec.num_classes, chunk.height, chunk.width), np.float32)
        wsum = np.zeros((chunk.height, chunk.width), np.float32)
        valid = np.zeros((chunk.height, chunk.width), bool)
        pending: deque[list] = deque()

        def batches() -> Iterator[np.ndarray]:
            """The windows touching the chunk, in plan order, batched; all-nodata ones skipped."""
            pixels = np.empty((batch, spec.num_bands, tile, tile), np.float32)
            entries: list = []
            for i in touching_rows:
                for j in touching_cols:
                    _, mask = read_window(ds, rows[i], cols[j], tile, tile, spec.bands, nodata=nodata,
                                          out=pixels[len(entries)])
                    if aoi is not None:
                        mask &= inside(aoi, ds.transform, rows[i], cols[j], tile, tile)
                    if not mask.any():
                        continue
                    entries.append((i, j, mask))
                    if len(entries) == batch:
                        pending.append(entries)
                        yield pixels
                        pixels, entries = np.empty_like(pixels), []
            if entries:
                pending.append(entries)
                yield pixels[:len(entries)]

        for logits in engine.infer_stream(batches()):
            for (i, j, mask), out in zip(pending.popleft(), logits, strict=True):
                _blend_into(chunk, info.height, info.width, rows[i], cols[j], tile, out, mask, wy[i], wx[j],
                            acc, wsum, valid, engine.name)
    return _native.argmax_labels(acc, wsum, chunk.height, valid, LABEL_NODATA, False, 1)


def _blend_into(chunk: Chunk, height: int, width: int, row: int, col: int, tile: int, out: np.ndarray,
                mask: np.ndarray, wy: np.ndarray, wx: np.ndarray, acc: np.ndarray, wsum: np.ndarray,
                valid: np.ndarray, engine: str) -> None:
    """Blend the part of one window's logits that falls in ``chunk`` (the window clipped to the scene)."""
    window = Window(row, col, tile, tile)
    part = window.intersection(chunk)
    part = part.intersection(Window(0, 0, height, width)) if part is not None else None
    if part is None:
        return
    wr, wc = slice(part.row - row, part.bottom - row), slice(part.col - col, part.right - col)
    y, x = part.row - chunk.row, part.col - chunk.col
    blend(acc, wsum, out[:, wr, wc], wy[wr], wx[wc], y, x, 1, engine, window)
    valid[y:y + part.height, x:x + part.width] |= mask[wr, wc]
