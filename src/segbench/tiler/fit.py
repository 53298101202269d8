"""Whether a scene's pixels look like those the model was trained on: its pixel type, and its band
means against the spec's normalization, estimated cheaply (the smallest overview, or the first
windows: never an extra pass over the scene). A scene that differs is still segmented, with one
line that says what differs and what the model expects (a warning: an int16 scene on a uint8
model, reflectances on a model trained on digital numbers)."""

from __future__ import annotations

import warnings

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from segbench.raster import SceneInfo
from segbench.spec import ModelSpec

#: band means further than this many of the spec's standard deviations from the spec's means: a warning
SIGMAS = 4.0
#: windows (of the model's tile) read across the top of a scene without overviews, for its means
FIRST_WINDOWS = 4


class PixelsWarning(UserWarning):
    """A scene's pixels are not what the model expects: their type, value range or size on the
    ground; or the scene has no CRS (its labels then have none either)."""


#: how far a scene's ground sample distance may be from the model's before segment warns
GSD_TOLERANCE = 0.10


def check_gsd(info: SceneInfo, spec: ModelSpec) -> None:
    """Warn when the scene's pixels are more than 10% larger or smaller than the model's."""
    if spec.gsd_m and info.gsd_m and abs(info.gsd_m / spec.gsd_m - 1) > GSD_TOLERANCE:
        warnings.warn(f"{info.path.name} has a ground sample distance of {info.gsd_m:.3g} m; the model "
                      f"was trained at {spec.gsd_m:.3g} m, so objects look {spec.gsd_m / info.gsd_m:.2g}x "
                      "their trained size; --resample runs it at the model's GSD.", PixelsWarning,
                      stacklevel=3)


def check_crs(info: SceneInfo) -> None:
    """Warn, in one line, when the scene has no CRS."""
    if info.crs is None:
        warnings.warn(f"{info.path.name} has no CRS; its labels will have none either.", PixelsWarning,
                      stacklevel=3)


def check_pixels(ds: rasterio.DatasetReader, info: SceneInfo, spec: ModelSpec,
                 nodata: float | None = None) -> None:
    """Warn, in one line, when the scene's pixel type is not the model's or a band's mean lies more
    than :data:`SIGMAS` of the spec's standard deviations from the spec's mean; ``nodata``
    overrides the file's."""
    differs = []
    if info.dtype != spec.input_dtype:
        differs.append(f"{info.dtype} pixels where the model expects {spec.input_dtype}")
    means, where = band_means(ds, spec, nodata)
    if means is not None:
        sigmas = np.abs(means - np.array(spec.mean)) / np.maximum(np.array(spec.std), 1e-12)
        if sigmas.max() > SIGMAS:
            differs.append(f"band means {_numbers(means)} ({where}), up to {sigmas.max():.0f} standard "
                           f"deviations from the model's {_numbers(spec.mean)} (std {_numbers(spec.std)})")
    if differs:
        warnings.warn(  # stacklevel 1: one place, so each scene's message is shown once
            f"{info.path.name} has {'; and '.join(differs)}: it is segmented anyway, but the labels may "
            "be wrong (give scenes like the model's training data).", PixelsWarning, stacklevel=1)


def band_means(ds: rasterio.DatasetReader, spec: ModelSpec,
               nodata: float | None = None) -> tuple[np.ndarray | None, str]:
    """The means of the model's bands over valid, finite pixels, from the smallest overview (or the
    first windows without one), and which it was; None where no pixel there is valid."""
    bands = list(spec.bands)
    try:
        overviews = ds.overviews(bands[0])
        if overviews:
            factor = overviews[-1]
            shape = (len(bands), max(1, ds.height // factor), max(1, ds.width // factor))
            data, where = ds.read(bands, out_shape=shape, masked=True), "from its overview"
        else:
            window = Window(0, 0, min(ds.width, FIRST_WINDOWS * spec.tile), min(ds.height, spec.tile))
            data, where = ds.read(bands, window=window, masked=True), "in its first windows"
    except RasterioIOError:  # a damaged file: the tiler's own reading says so, in one sentence
        return None, ""
    pixels = np.ma.getdata(data).astype(np.float64)
    valid = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(pixels).all(axis=0)
    if nodata is not None:
        valid &= ~(np.isnan(pixels) if np.isnan(nodata) else pixels == nodata).any(axis=0)
    if not valid.any():
        return None, where
    return pixels[:, valid].mean(axis=1), where


def _numbers(values) -> str:
    """Values as a reader wants them: 9995.3, 0.0123 (never 1e+04)."""
    return ", ".join(f"{v:.1f}".removesuffix(".0") if abs(v) >= 1 else f"{v:.3g}" for v in values)
