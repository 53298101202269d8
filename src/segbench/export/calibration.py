"""Calibration sets: whole windows of valid imagery drawn from scenes, reproducibly.

A calibration tile is a tile-sized window lying inside its scene in which
every pixel is valid (nodata and internal masks honoured): never padding
beyond the scene's edge, never nodata fill, which would teach the quantizer
ranges the imagery does not have. Scenes smaller than a tile give no tiles.

Windows are drawn from each scene in a seeded order that prefers windows not
overlapping those already drawn, and scenes take turns in a seeded order, so
``count`` tiles come from as many scenes as possible and the same seed gives
the same tiles. Calibration scenes must never be the evaluation scenes; the
digest of the tiles identifies a calibration set in the spec of every engine
built from it.

:func:`calibration_set` also draws held-out tiles, with their labels where the
scenes' label rasters are given: what an int8 graph's accuracy target is
checked on (:mod:`segbench.export.qualify`). With two or more scenes, whole
scenes are held out (a quarter of them, at least one, in the seeded order):
the quantizer never sees them, as it will never see the scenes it is benched
and deployed on; their windows of the tile grid come first, so they give as
many windows that overlap no other as they hold. With one scene (or when the held-out scenes have no valid
window), the held-out tiles are windows of the calibration scenes that no
calibration tile overlaps, which share their imagery: the target then takes
its largest margin.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.errors import InputError
from segbench.export.qualify import HeldOut
from segbench.raster import check_bands, label_targets, open_raster, read_window, scene_info, valid_mask
from segbench.spec import ModelSpec

#: cells per tile side of the coarse validity mask that pre-selects windows
MASK_CELLS_PER_TILE = 8
#: share of the calibration scenes held out whole (at least one, when there are two or more)
HELD_OUT_SCENE_SHARE = 0.25


def tiles_digest(tiles: np.ndarray) -> str:
    """SHA-256 of a tile set, recorded in the spec of calibrated engines."""
    return hashlib.sha256(np.ascontiguousarray(tiles).tobytes()).hexdigest()


def calibration_tiles(
    scenes: Sequence[str | os.PathLike[str]],
    spec: ModelSpec,
    count: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """``count`` raw-pixel tiles ``(count, bands, tile, tile)`` float32 of valid imagery from ``scenes``.

    Fewer when the scenes hold fewer distinct valid windows; one sentence when they hold none.
    """
    return calibration_set(scenes, spec, count, held_out=0, seed=seed).tiles


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration tiles, and held-out tiles from scenes (``held_out_scenes``, indexes) or windows they
    do not overlap (None: none found); ``windows`` and ``held_out_windows`` are their
    ``(scene index, row, col)``."""

    tiles: np.ndarray
    held_out: HeldOut | None
    windows: tuple[tuple[int, int, int], ...] = ()
    held_out_windows: tuple[tuple[int, int, int], ...] = ()
    held_out_scenes: tuple[int, ...] = ()


def calibration_set(
    scenes: Sequence[str | os.PathLike[str]],
    spec: ModelSpec,
    count: int = 32,
    held_out: int = 16,
    labels: Sequence[str | os.PathLike[str]] | None = None,
    seed: int = 0,
) -> CalibrationSet:
    """``count`` calibration tiles and up to ``held_out`` held-out tiles of valid imagery from
    ``scenes``; ``labels``, one label raster per scene, give the held-out tiles their labels."""
    if not scenes:
        raise InputError("Give at least one calibration scene.")
    if labels and len(labels) != len(scenes):
        raise InputError(f"Give one label raster per calibration scene ({len(scenes)} scenes, "
                         f"{len(labels)} label rasters).")
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(scenes))]
    held = order[:max(1, round(HELD_OUT_SCENE_SHARE * len(scenes)))] if held_out and len(scenes) > 1 else []
    tiles, windows, kept = [], [], []
    if held:  # whole scenes: the rest calibrate, the held-out ones only check
        tiles, windows, _ = _gather(scenes, spec, [i for i in order if i not in held], seed, count, 0)
        _, _, kept = _gather(scenes, spec, held, seed, 0, held_out)
    if not tiles or not kept:  # one scene, or held-out scenes without a valid window: windows
        held = []
        tiles, windows, kept = _gather(scenes, spec, order, seed, count, held_out)
    if not tiles:
        names = ", ".join(Path(s).name for s in scenes)
        raise InputError(
            f"No calibration scene ({names}) has a {spec.tile}x{spec.tile} window of valid pixels: "
            "they are smaller than a tile or mostly nodata; give larger training scenes."
        )
    if not kept:
        return CalibrationSet(np.stack(tiles), None, tuple(windows))
    targets = None
    if labels:
        targets = np.stack([_label_window(Path(labels[i]), spec, row, col) for i, row, col, _ in kept])
    names = tuple(Path(scenes[i]).name for i in held)
    return CalibrationSet(np.stack(tiles), HeldOut(np.stack([k[3] for k in kept]), targets, names),
                          tuple(windows), tuple((i, row, col) for i, row, col, _ in kept), tuple(held))


def _gather(scenes, spec: ModelSpec, order: list[int], seed: int, count: int, held_out: int) -> tuple:
    """``count`` calibration tiles and ``held_out`` held-out windows from the scenes in ``order``, taking
    turns: ``(tiles, windows, kept)``, ``kept`` the held-out ``(scene, row, col, pixels)``."""
    avoid: dict[int, list[tuple[int, int]]] = {i: [] for i in order}  # held-out windows per scene
    grid_first = count == 0  # whole held-out scenes: as many disjoint windows as they hold
    draws = {i: _draw(Path(scenes[i]), spec, np.random.default_rng([seed, i]), avoid[i], grid_first)
             for i in order}
    tiles: list[np.ndarray] = []
    windows: list[tuple[int, int, int]] = []
    kept: list[tuple[int, int, int, np.ndarray]] = []
    while draws and (len(tiles) < count or len(kept) < held_out):
        for i in list(draws):
            if len(tiles) == count and len(kept) == held_out:
                break
            drawn = next(draws[i], None)
            if drawn is None:
                del draws[i]
                continue
            row, col, pixels, fresh = drawn
            # fresh windows (overlapping none drawn before) are shared in proportion to the two counts;
            # the others go to calibration only, and overlap no held-out window (_draw skips those)
            behind = len(kept) * count < len(tiles) * held_out or len(tiles) == count
            if fresh and len(kept) < held_out and behind:
                kept.append((i, row, col, pixels))
                avoid[i].append((row, col))
            elif len(tiles) < count:
                tiles.append(pixels)
                windows.append((i, row, col))
            elif not fresh:  # the scene's fresh windows are all drawn (they come first)
                del draws[i]
    return tiles, windows, kept


def _label_window(path: Path, spec: ModelSpec, row: int, col: int) -> np.ndarray:
    from rasterio.windows import Window

    with open_raster(path) as ds:
        window = ds.read(1, window=Window(col, row, spec.tile, spec.tile))
        return label_targets(window, ds.nodata, None, spec.ignore_index, spec.reduce_zero_label)


def _draw(path: Path, spec: ModelSpec, rng: np.random.Generator, avoid: list[tuple[int, int]] = (),
          grid_first: bool = False) -> Iterator[tuple[int, int, np.ndarray, bool]]:
    """``(row, col, pixels, fresh)`` of windows of valid pixels of one scene, lazily, in a seeded order
    preferring fresh ground: ``fresh`` windows overlap none drawn before them; the others overlap no
    window in ``avoid`` (read when they are reached: the held-out windows drawn by then).
    ``grid_first``: the windows of the tile grid first."""
    tile = spec.tile
    with open_raster(path) as ds:
        info = scene_info(ds)
        check_bands(info, spec)
        origins = _candidate_origins(ds, tile)
    if not len(origins):
        return
    origins = origins[rng.permutation(len(origins))]
    if grid_first:
        # the scene then gives as many windows that overlap none as fit: randomly placed ones block
        # the grid (a 512^2 scene gave one or two 256^2 windows, not four)
        on_grid = (origins % tile == 0).all(axis=1)
        origins = np.concatenate([origins[on_grid], origins[~on_grid]])
    taken: list[tuple[int, int]] = []
    overlapping = []
    for row, col in origins:  # first pass: windows that overlap none drawn so far
        if any(abs(row - r) < tile and abs(col - c) < tile for r, c in taken):
            overlapping.append((row, col))
            continue
        pixels = _read_valid(path, spec, row, col)
        if pixels is not None:
            taken.append((row, col))
            yield int(row), int(col), pixels, True
    for row, col in overlapping:  # then the rest
        if any(abs(row - r) < tile and abs(col - c) < tile for r, c in avoid):
            continue
        pixels = _read_valid(path, spec, row, col)
        if pixels is not None:
            yield int(row), int(col), pixels, False


def _candidate_origins(ds, tile: int) -> np.ndarray:
    """Origins ``(n, 2)`` of windows inside the scene that a coarse validity mask marks all valid.

    Origins lie on a grid of ``tile / MASK_CELLS_PER_TILE`` pixels, plus the
    last row and column that fit; the exact check happens when a window is read.
    """
    if ds.height < tile or ds.width < tile:
        return np.zeros((0, 2), int)
    step = max(1, tile // MASK_CELLS_PER_TILE)
    rows = np.unique(np.r_[np.arange(0, ds.height - tile + 1, step), ds.height - tile])
    cols = np.unique(np.r_[np.arange(0, ds.width - tile + 1, step), ds.width - tile])
    coarse = valid_mask(ds, (-(-ds.height // step), -(-ds.width // step)))
    if coarse.all():
        return np.array([(r, c) for r in rows for c in cols], int)
    # invalid cells per window from a summed-area table of the coarse mask
    invalid = np.pad(np.cumsum(np.cumsum(~coarse, 0), 1), ((1, 0), (1, 0)))
    r0, c0 = np.meshgrid(rows // step, cols // step, indexing="ij")
    r1 = np.minimum(-(-(rows + tile) // step), coarse.shape[0])[:, None]
    c1 = np.minimum(-(-(cols + tile) // step), coarse.shape[1])[None, :]
    bad = invalid[r1, c1] - invalid[r0, c1] - invalid[r1, c0] + invalid[r0, c0]
    keep = np.argwhere(bad == 0)
    return np.stack([rows[keep[:, 0]], cols[keep[:, 1]]], axis=1) if len(keep) else np.zeros((0, 2), int)


def _read_valid(path: Path, spec: ModelSpec, row: int, col: int) -> np.ndarray | None:
    """The window's pixels when every one of them is valid, else None."""
    with open_raster(path) as ds:
        pixels, valid = read_window(ds, int(row), int(col), spec.tile, spec.tile, spec.bands)
    return pixels if valid.all() else None
