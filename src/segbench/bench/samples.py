"""The query sample library of the LoadGen scenarios: the bench's own windows, read once.

Each evaluation scene is cut into the tiler's plan (the engine's tile, the
bench's overlap), and at most ``limit`` of its windows, spread evenly over
the plan, are read into one array with their labels (the ignore index where
a window overhangs the scene or the label raster has no label).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segbench.raster import label_targets, open_raster, read_window, scene_info
from segbench.spec import ModelSpec
from segbench.tiler.windows import Window, plan_windows, stride_for

#: the most windows the library holds: enough that LoadGen's sample order varies, bounded in memory
#: (256 RGB tiles of 512^2 are 800 MB of float32)
LIMIT = 256


@dataclass(frozen=True)
class SampleLibrary:
    """``tiles`` ``(N, bands, tile, tile)`` raw float32 pixels and their ``targets`` ``(N, tile, tile)``
    (None without labels); ``stride``: the plan's, whose square is each window's new area."""

    tiles: np.ndarray
    targets: np.ndarray | None
    stride: int


def sample_library(scenes: Sequence[str | os.PathLike[str]], spec: ModelSpec, overlap: int | None,
                   labels: Sequence[str | os.PathLike[str]] = (), limit: int = LIMIT) -> SampleLibrary:
    """The windows of ``scenes`` as the tiler plans them (at most ``limit``, spread over the scenes)."""
    stride = stride_for(spec.tile, overlap, default=spec.stride)
    plans = []
    for scene in scenes:
        with open_raster(scene) as ds:
            info = scene_info(ds)
        plans.append(plan_windows(info.height, info.width, spec.tile, stride))
    total = sum(len(p) for p in plans)
    keep = set(np.linspace(0, total - 1, min(limit, total)).round().astype(int).tolist())
    tiles, targets, i = [], [], 0
    for n, (scene, plan) in enumerate(zip(scenes, plans, strict=True)):
        chosen = [w for j, w in enumerate(plan, i) if j in keep]
        i += len(plan)
        tiles += _read(scene, chosen, spec)
        if labels:
            targets += _targets(labels[n], chosen, spec)
    return SampleLibrary(np.stack(tiles), np.stack(targets) if labels else None, stride)


def _read(scene: str | os.PathLike[str], windows: list[Window], spec: ModelSpec) -> list[np.ndarray]:
    with open_raster(scene) as ds:
        return [read_window(ds, w.row, w.col, w.height, w.width, spec.bands)[0] for w in windows]


def _targets(path: str | os.PathLike[str], windows: list[Window], spec: ModelSpec) -> list[np.ndarray]:
    """Each window's labels as scoring targets (the ignore index outside the raster and on nodata)."""
    with open_raster(path) as ds:
        out = []
        for w in windows:
            label, valid = read_window(ds, w.row, w.col, w.height, w.width, [1], fill=spec.ignore_index)
            out.append(label_targets(label[0].astype(np.int64), ds.nodata, valid, spec.ignore_index,
                                     spec.reduce_zero_label))
        return out
