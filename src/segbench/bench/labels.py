"""What a bench's label rasters leave to score: ids outside the model's classes (other than the
ignore index and nodata) are reported with the share of pixels they cover, and labels that leave no
pixel to score are refused before any work (the figures would be computed over nothing).

One pass over the label rasters (one byte a pixel, block by block), before the engines run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.errors import RasterioIOError

from segbench.errors import InputError, first_line
from segbench.raster import open_raster
from segbench.spec import ModelSpec


class LabelsWarning(UserWarning):
    """A label raster holds ids outside the model's classes."""


@dataclass(frozen=True)
class LabelCounts:
    """One label raster's pixels: ``scored`` (a class of the model), ``outside`` (another id, by id)
    and ``total`` (every pixel, ignored and nodata included)."""

    scored: int
    outside: dict[int, int]
    total: int


def count_labels(path: str | os.PathLike[str], spec: ModelSpec) -> LabelCounts:
    """The pixels of a label raster (band 1) that are scored and those with ids outside the classes."""
    with open_raster(path) as ds:
        nodata = ds.nodata
        counts: dict[int, int] = {}
        try:
            for _, window in ds.block_windows(1):
                ids, n = np.unique(ds.read(1, window=window), return_counts=True)
                for i, c in zip(ids.tolist(), n.tolist(), strict=True):
                    counts[i] = counts.get(i, 0) + c
        except RasterioIOError as exc:
            why = first_line(exc.__cause__ or exc)  # GDAL's own reason, not rasterio's "see previous"
            raise InputError(f"Label raster {path} could not be read ({why}); it may be truncated or "
                             "damaged.") from exc
    first = 1 if spec.reduce_zero_label else 0  # 1-based labels: 0 is ignored, as mmseg does
    skipped = {spec.ignore_index, nodata} | ({0} if spec.reduce_zero_label else set())
    scored = sum(c for i, c in counts.items() if i not in skipped and first <= i < first + spec.num_classes)
    outside = {int(i): c for i, c in counts.items()
               if i not in skipped and not first <= i < first + spec.num_classes}
    return LabelCounts(scored, outside, sum(counts.values()))


def check_labels(paths: Sequence[str | os.PathLike[str]], spec: ModelSpec) -> None:
    """Warn, one line per raster, where ids outside the classes cover pixels; one sentence when no
    pixel of any raster is left to score."""
    first = 1 if spec.reduce_zero_label else 0
    classes = f"the model's {spec.num_classes} classes are ids {first} to {first + spec.num_classes - 1}"
    found = {os.fspath(path): count_labels(path, spec) for path in paths}
    if found and not any(f.scored for f in found.values()):
        seen = set().union(*(f.outside for f in found.values()))
        what = f"their ids ({_ids(seen)}) are outside the classes" if seen else \
            "every pixel is nodata or the ignore index"
        raise InputError(f"The label rasters leave no pixel to score: {what}; {classes} (ignore index "
                         f"{spec.ignore_index}); give labels with the model's class ids.")
    for path, f in found.items():
        if f.outside:
            share = sum(f.outside.values()) / f.total
            warnings.warn(  # stacklevel 1: one place, so each raster's message is shown once
                f"{path}: {share:.1%} of its pixels have ids outside the model's classes "
                f"({_ids(f.outside)}), which are not scored; {classes}.", LabelsWarning, stacklevel=1)


def _ids(ids) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
