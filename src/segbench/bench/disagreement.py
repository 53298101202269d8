"""Where an engine's labels differ from the reference engine's: a map, the confusion, the seams.

For each scene an engine segmented, its label raster is read block by block
beside the reference engine's (same grid) and, where given, the ground truth:

* the disagreement map, ``<scene>.disagreement.tif`` beside the engine's
  labels: 0 where the two agree, ``k + 1`` where they differ and the
  reference said class ``k`` (so the map shows which class was lost), 255
  where either is nodata; a COG with a colour table and category names, and
  its QGIS style and attribute table like every label raster (:mod:`segbench.geo`);
* the confusion between reference and engine: which class became which;
* the seam band: pixels within :data:`SEAM_BAND` pixels of a window border
  inside the scene, from the tiler's own window plan (the edges of every
  window, where the blend's weights change), against the pixels elsewhere:
  how often the engine differs from the reference there, and how often it is
  wrong against the ground truth there. Seams that show are a higher rate in
  the band than elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbench.raster import LABEL_NODATA, LabelWriter, label_targets, open_raster, scene_info
from segbench.spec import ModelSpec
from segbench.tiler.windows import axis_starts

#: pixels either side of a window border that count as the seam band
SEAM_BAND = 4
#: the colour of "agrees" on a disagreement map (the classes' own colours show what differs)
AGREE_COLOUR = (235, 235, 235)
SUFFIX = ".disagreement.tif"


def map_path(labels: str | os.PathLike[str]) -> Path:
    """``x.labels.tif`` -> ``x.disagreement.tif`` beside it."""
    labels = Path(labels)
    return labels.with_name(labels.name.removesuffix(".tif").removesuffix(".labels") + SUFFIX)


def map_categories(classes: Sequence[str]) -> list[str]:
    """The names of a disagreement map's values: 0 agrees, k + 1 differs where the reference said k."""
    return ["agrees", *(f"differs (reference: {name})" for name in classes)]


def border_distance(size: int, tile: int, step: int) -> np.ndarray:
    """Each pixel's distance along one axis to the nearest window border inside the scene (a
    window's first or past-last row that is not the scene's own edge); a large number where the
    scene has a single window along that axis."""
    edges = sorted({e for s in axis_starts(size, tile, step) for e in (s, s + tile) if 0 < e < size})
    if not edges:
        return np.full(size, np.iinfo(np.int32).max, np.int32)
    # a border at e lies between pixels e - 1 and e: both are 0 pixels from it
    x = np.arange(size)
    e = np.asarray(edges)
    below = np.searchsorted(e, x, side="right")  # the borders at or before pixel x
    far = np.iinfo(np.int32).max
    behind = np.where(below > 0, x - e[np.maximum(below - 1, 0)], far)  # x - e for the last e <= x
    ahead = np.where(below < len(e), e[np.minimum(below, len(e) - 1)] - 1 - x, far)  # e - 1 - x
    return np.minimum(behind, ahead).astype(np.int32)


@dataclass
class Disagreement:
    """One engine's comparison with the reference over its scenes, accumulated block by block."""

    classes: tuple[str, ...]
    band: int = SEAM_BAND
    confusion: np.ndarray = field(default=None)  # [reference, engine] pixel counts
    seam: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))  # [band?, differ?]
    wrong: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))  # [band?, wrong?]
    maps: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.confusion is None:
            c = len(self.classes)
            self.confusion = np.zeros((c, c), np.int64)

    def add(self, engine: np.ndarray, reference: np.ndarray, valid: np.ndarray, in_band: np.ndarray,
            truth: np.ndarray | None, ignore_index: int) -> np.ndarray:
        """Count one block; returns its disagreement map values."""
        c = len(self.classes)
        ok = valid & (engine < c) & (reference < c)
        e, r = engine[ok].astype(np.int64), reference[ok].astype(np.int64)
        self.confusion += np.bincount(r * c + e, minlength=c * c).reshape(c, c)
        differ = engine != reference
        for band in (0, 1):
            where = ok & (in_band == bool(band))
            self.seam[band, 0] += int(where.sum())
            self.seam[band, 1] += int((where & differ).sum())
            if truth is not None:
                scored = where & (truth != ignore_index)
                self.wrong[band, 0] += int(scored.sum())
                self.wrong[band, 1] += int((scored & (engine != truth)).sum())
        values = np.where(differ, reference.astype(np.int64) + 1, 0)
        return np.where(ok, values, LABEL_NODATA).astype(np.uint8)

    def to_dict(self) -> dict:
        compared = int(self.confusion.sum())
        differ = compared - int(np.trace(self.confusion))

        def share(counts: np.ndarray) -> float | None:
            return float(counts[1] / counts[0]) if counts[0] else None

        scored = self.wrong.any()
        return {
            "pixels": compared, "differ": differ, "share": differ / compared if compared else None,
            "confusion": self.confusion.tolist(), "classes": list(self.classes),
            "seam": {"band_px": self.band, "pixels_in_band": int(self.seam[1, 0]),
                     "differ_in_band": share(self.seam[1]), "differ_elsewhere": share(self.seam[0]),
                     "error_in_band": share(self.wrong[1]) if scored else None,
                     "error_elsewhere": share(self.wrong[0]) if scored else None},
            "maps": list(self.maps),
        }


def compare_scene(found: Disagreement, engine_labels: str | os.PathLike[str],
                  reference_labels: str | os.PathLike[str], spec: ModelSpec, tile: int, step: int,
                  truth: str | os.PathLike[str] | None = None, write_map: bool = True) -> None:
    """Add one scene to ``found`` (and write its disagreement map beside the engine's labels)."""
    with open_raster(engine_labels) as pred, open_raster(reference_labels) as ref:
        info = scene_info(pred)
        if (ref.width, ref.height) != (info.width, info.height):
            raise ValueError(f"{reference_labels} and {engine_labels} differ in size")
        lab = open_raster(truth) if truth is not None else None
        rows = border_distance(info.height, tile, step) < found.band
        cols = border_distance(info.width, tile, step) < found.band
        dest = map_path(engine_labels)
        writer = LabelWriter(dest, info, classes=map_categories(spec.classes),
                             palette=[AGREE_COLOUR, *spec.palette], description="disagreement") \
            if write_map else None
        try:
            for _, window in pred.block_windows(1):
                r0, c0 = window.row_off, window.col_off
                p, q = pred.read(1, window=window), ref.read(1, window=window)
                valid = (p != LABEL_NODATA) & (q != LABEL_NODATA)
                in_band = rows[r0:r0 + p.shape[0], None] | cols[None, c0:c0 + p.shape[1]]
                targets = None
                if lab is not None:
                    targets = label_targets(lab.read(1, window=window), lab.nodata, valid, spec.ignore_index,
                                            spec.reduce_zero_label)
                values = found.add(p, q, valid, in_band, targets, spec.ignore_index)
                if writer is not None:
                    writer.write_rows(r0, values, col=c0)
            if writer is not None:
                writer.close()
                found.maps.append(str(dest))
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            if lab is not None:
                lab.close()
