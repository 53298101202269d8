"""GeoTIFF in and out, for every step that touches imagery.

Reading: open a scene with one-sentence errors for missing or non-raster
files, check its bands against a :class:`~segbench.spec.ModelSpec`, and read
windows that may overhang the scene (padded with a fill value) together with
a validity mask that honours nodata values and internal masks.

Writing: whole small rasters (synthetic scenes, training windows) and
streamed label rasters written row band by row band, finished as a
Cloud-Optimized GeoTIFF with overviews, colour table and class names. Every
output goes to a temporary name and is renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from segbench.errors import InputError, OutputError
from segbench.files import (
    atomic_output,
    check_output_folder,
    describe_os_error,
    remove_quietly,
    remove_stale_temporaries,
)
from segbench.spec import IGNORE_INDEX, ModelSpec

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")
# What rasterio raises for GDAL failures: its own errors and GDAL's CPL errors.
GDAL_ERRORS = (RasterioError, CPLE_BaseError)
LABEL_NODATA = IGNORE_INDEX
LABEL_BLOCK = 256  # tile size of the label rasters we write
#: a class probability p is stored as round(PROBABILITY_SCALE * p); LABEL_NODATA (255) is nodata
PROBABILITY_SCALE = 254
#: a confidence (the largest class probability p) is stored as round(CONFIDENCE_SCALE * p), 0 where
#: nothing was predicted; the native loops (_native.cpp) use the same scale, and a test checks them
CONFIDENCE_SCALE = 255


@dataclass(frozen=True)
class SceneInfo:
    """What the tiler and the bench need to know about a scene, read once."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: Any
    transform: Any
    nodata: float | None
    has_mask: bool
    block_height: int = 1  # rows per block of the first band (1 for striped files)
    alpha_bands: tuple[int, ...] = ()  # 1-based bands whose colour interpretation is alpha

    @property
    def gsd_m(self) -> float | None:
        """Ground sample distance: the pixel's mean side in metres (a geographic CRS's degrees
        converted at the scene's central latitude, on the WGS84 ellipsoid); None without a CRS."""
        if self.crs is None:
            return None
        t = self.transform
        if self.crs.is_geographic:
            lat = np.radians(t.f + t.e * self.height / 2)
            # metres per degree of longitude and of latitude at ``lat`` (WGS84)
            per_lon = 111_412.84 * np.cos(lat) - 93.5 * np.cos(3 * lat)
            per_lat = 111_132.92 - 559.82 * np.cos(2 * lat) + 1.175 * np.cos(4 * lat)
            return float((abs(t.a) * per_lon + abs(t.e) * per_lat) / 2)
        factor = self.crs.linear_units_factor[1] if self.crs.linear_units_factor else 1.0
        return float((abs(t.a) + abs(t.e)) / 2 * factor)

    @property
    def pixel_area_m2(self) -> float | None:
        """Area of one pixel in square metres when the CRS is projected in metres."""
        if self.crs is None or not self.crs.is_projected:
            return None
        factor = self.crs.linear_units_factor[1] if self.crs.linear_units_factor else 1.0
        return abs(self.transform.a * self.transform.e) * factor * factor


@dataclass(frozen=True)
class AreaOfInterest:
    """What to segment of a scene: polygons (one GeoJSON geometry) in a CRS.

    Windows that hold none of it are not run, and pixels outside it are nodata.
    """

    geometry: dict
    crs: Any = None
    name: str = "the area of interest"

    def for_scene(self, info: SceneInfo) -> dict:
        """The geometry in ``info``'s CRS; one sentence when it misses the scene."""
        from rasterio.features import bounds
        from rasterio.warp import transform_geom

        geometry = self.geometry
        if self.crs is not None and info.crs is not None and self.crs != info.crs:
            geometry = transform_geom(self.crs, info.crs, geometry)
        west, south, east, north = bounds(geometry)
        t = info.transform
        x0, x1 = sorted((t.c, t.c + t.a * info.width))
        y0, y1 = sorted((t.f, t.f + t.e * info.height))
        if west >= x1 or east <= x0 or south >= y1 or north <= y0:
            raise InputError(f"{self.name} does not overlap scene {info.path.name}.")
        return geometry


def inside(geometry: dict, ds_transform, row: int, col: int, height: int, width: int) -> np.ndarray:
    """Bool ``(height, width)``: the pixels of a window (scene pixel offsets) inside ``geometry``."""
    from rasterio.features import geometry_mask
    from rasterio.windows import transform as window_transform

    return geometry_mask([geometry], (height, width), window_transform(Window(col, row, width, height),
                                                                       ds_transform), invert=True)


#: what marks a scene given as a URL (GDAL reads it over HTTP with /vsicurl/) or a GDAL virtual path
URL_PREFIXES = ("http://", "https://", "/vsi")


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for a scene given as a URL or GDAL virtual path rather than a local file."""
    return isinstance(path, str) and path.startswith(URL_PREFIXES)


def open_raster(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open a raster for reading (a file, or a URL of a COG), every failure one clear sentence."""
    url = is_url(path)
    if not url:
        path = Path(path)
        if not path.exists():
            raise InputError(f"Input {path} does not exist.")
        if path.is_dir():
            raise InputError(f"Input {path} is a folder; give a GeoTIFF file.")
    # A COG over HTTP: one request for its header, no listing of its "folder" or probing for
    # sidecars. Set for this open only and this thread only (rasterio.Env: GDAL's thread-local
    # configuration), never in the process's environment, which reader threads would then be
    # writing while GDAL's own threads read it (setenv and getenv race in glibc).
    options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"} if url else {}
    try:
        with warnings.catch_warnings(), rasterio.Env(**options):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        if url:
            raise InputError(f"Could not read {path}: {_first_line(exc)}.") from exc
        raise InputError(f"Input {path} is not a readable GeoTIFF ({_first_line(exc)}).") from exc


def scene_info(ds: rasterio.DatasetReader) -> SceneInfo:
    """Summarise an open dataset; checks dtype consistency across bands."""
    dtypes = set(ds.dtypes)
    if len(dtypes) != 1:
        raise InputError(f"Scene {ds.name} mixes band types {sorted(dtypes)}; use one type.")
    dtype = ds.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"Scene {ds.name} has {dtype} pixels; supported types are "
            f"{', '.join(SUPPORTED_DTYPES)}."
        )
    has_mask = any(MaskFlags.per_dataset in f for f in ds.mask_flag_enums)
    return SceneInfo(
        path=Path(ds.name),
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtype=dtype,
        crs=ds.crs,
        transform=ds.transform,
        nodata=ds.nodata,
        has_mask=has_mask,
        block_height=ds.block_shapes[0][0],
        alpha_bands=tuple(i for i, c in enumerate(ds.colorinterp, start=1) if c == ColorInterp.alpha),
    )


def check_bands(info: SceneInfo, spec: ModelSpec) -> None:
    """Raise when the scene lacks a band the model reads; warn when it has bands the model does not
    read, naming the ones it does and how to choose others (once per scene: warnings' default
    filter shows one message once from one place)."""
    missing = [b for b in spec.bands if b > info.count]
    if missing:
        raise InputError(
            f"Scene {info.path.name} has {info.count} band(s) but the model reads band(s) "
            f"{', '.join(map(str, spec.bands))}; give a scene with those bands."
        )
    unread = sorted(set(range(1, info.count + 1)) - set(spec.bands))
    if unread:
        named = ", ".join(f"{b} (alpha: a validity mask)" if b in info.alpha_bands else str(b)
                          for b in unread)
        picks = " ".join(f"-b B{i}" for i in range(1, spec.num_bands + 1))
        warnings.warn(  # stacklevel 1: one place, so each scene's message is shown once
            f"{info.path.name} has {info.count} bands and the model reads band(s) "
            f"{', '.join(map(str, spec.bands))} (its spec's order), not {named}; to feed it others, "
            f"segment a VRT that lists them in that order (gdalbuildvrt {picks} picked.vrt "
            f"{info.path.name}).", UnreadBandsWarning, stacklevel=1)


class UnreadBandsWarning(UserWarning):
    """A scene has bands the model does not read."""


def read_window(
    ds: rasterio.DatasetReader,
    row: int,
    col: int,
    height: int,
    width: int,
    bands: Sequence[int],
    fill: float = 0.0,
    nodata: float | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window that may overhang the scene.

    Returns ``(pixels, valid)``: ``pixels`` is float32 ``(len(bands), height,
    width)`` with ``fill`` outside the scene and on invalid pixels, ``valid``
    is bool ``(height, width)``; a pixel is valid when it lies in the scene
    and the dataset mask (nodata or internal mask) marks it valid, and, in a
    float raster, every band is finite there (NaN and +-inf are nodata).
    ``nodata`` overrides the file's nodata value. ``out``, a float32 array of that shape,
    receives the pixels instead of a new array (e.g. a slot of a batch).
    """
    shape = (len(bands), height, width)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, not {out.dtype} {out.shape}")
    valid = np.zeros((height, width), dtype=bool)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + height, ds.height), min(col + width, ds.width)
    if (r1 - r0, c1 - c0) != (height, width):  # overhangs: fill what the scene does not cover
        out[...] = fill
    if r1 <= r0 or c1 <= c0:
        return out, valid
    win = Window(c0, r0, c1 - c0, r1 - r0)
    sl = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
    try:
        data = ds.read(list(bands), window=win)
        if nodata is None and _all_valid(ds):
            mask = np.ones(data.shape[1:], bool)
        elif nodata is None:
            mask = ds.dataset_mask(window=win) > 0
        elif np.isnan(nodata):
            mask = ~np.all(np.isnan(data), axis=0)
        else:
            mask = ~np.all(data == nodata, axis=0)
        if data.dtype.kind == "f":  # NaN and +-inf are no-data in a float raster, whatever its nodata says
            mask &= np.isfinite(data).all(axis=0)
    except GDAL_ERRORS as exc:
        raise InputError(f"Could not read {ds.name}: {_first_line(exc)}.") from exc
    out[(slice(None), *sl)] = data
    valid[sl] = mask
    if not mask.all():
        out[(slice(None), *sl)][:, ~mask] = fill
    return out, valid


def valid_mask(ds: rasterio.DatasetReader, out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Bool mask of the scene's valid pixels (nodata values, internal masks), whole scene.

    With ``out_shape`` the mask is read decimated by GDAL (nearest sample per
    cell): cheap on large scenes, exact only at full resolution.
    """
    shape = out_shape or (ds.height, ds.width)
    if _all_valid(ds):
        return np.ones(shape, bool)
    try:
        return ds.dataset_mask(out_shape=shape) > 0
    except GDAL_ERRORS as exc:
        raise InputError(f"Could not read {ds.name}: {_first_line(exc)}.") from exc


def _all_valid(ds: rasterio.DatasetReader) -> bool:
    """True when no band has nodata, a mask or alpha (GDAL would return an all-255 mask)."""
    return all(flags == [MaskFlags.all_valid] for flags in ds.mask_flag_enums)


def read_all(path: str | os.PathLike[str], bands: Sequence[int] | None = None) -> np.ndarray:
    """Read a whole (small) raster as ``(bands, H, W)`` in its own dtype."""
    with open_raster(path) as ds:
        try:
            return ds.read(list(bands) if bands else None)
        except GDAL_ERRORS as exc:
            raise InputError(f"Could not read {path}: {_first_line(exc)}.") from exc


def write_raster(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    colormap: dict[int, tuple[int, int, int]] | None = None,
    tags: dict[str, str] | None = None,
    tile: int = 256,
) -> Path:
    """Write a whole array ``(bands, H, W)`` or ``(H, W)`` as a tiled, compressed GeoTIFF."""
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress="deflate",
        predictor=2 if data.dtype.kind in "ui" else 1,
    )
    if width >= tile and height >= tile:
        profile.update(tiled=True, blockxsize=tile, blockysize=tile)
    dest = Path(path)
    with atomic_output(dest) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as ds:
                ds.write(data)
                if colormap:
                    ds.write_colormap(1, colormap)
                if tags:
                    ds.update_tags(**tags)
    return dest


class LabelWriter:
    """Stream a uint8 raster (one band, or ``descriptions`` bands) row band by row band, then
    finish it as a COG.

    Rows are written to a tiled GeoTIFF under a temporary name; :meth:`close`
    adds overviews, copies it to a Cloud-Optimized GeoTIFF (also under a
    temporary name) and renames that onto the destination. :meth:`abort`
    (or leaving a ``with`` block on an exception) removes every temporary file.

    ``stage`` names the staged GeoTIFF instead of a per-process temporary one,
    for a run that can be resumed: :meth:`flush` puts what was written on
    disk, :meth:`suspend` closes it and keeps it, ``resume=True`` reopens it
    for update, and :meth:`close` interrupted (Ctrl-C) keeps it too.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        info: SceneInfo,
        *,
        nodata: int = LABEL_NODATA,
        classes: Sequence[str] | None = None,
        palette: Sequence[tuple[int, int, int]] | None = None,
        resampling: str = "nearest",
        description: str = "labels",
        descriptions: Sequence[str] | None = None,
        stage: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> None:
        self.dest = Path(dest)
        parent = check_output_folder(self.dest)
        remove_stale_temporaries(self.dest)
        self.resampling = resampling
        self._kept = stage is not None  # a named stage outlives an interrupted run
        self._stage = Path(stage or parent / f".{self.dest.name}.stage-{os.getpid()}.tif")
        self._final_tmp = parent / f".{self.dest.name}.part-{os.getpid()}"
        if resume:
            try:
                self._ds = _open_update(self._stage)
            except (*GDAL_ERRORS, OSError) as exc:
                raise OutputError(f"Could not reopen {self._stage}: {_first_line(exc)}.") from exc
            return
        profile = dict(
            driver="GTiff",
            width=info.width,
            height=info.height,
            count=len(descriptions) if descriptions else 1,
            dtype="uint8",
            crs=info.crs,
            transform=info.transform,
            nodata=nodata,
            tiled=True,
            blockxsize=LABEL_BLOCK,
            blockysize=LABEL_BLOCK,
            # The staging file is temporary: left uncompressed, the COG copy compresses once.
            BIGTIFF="YES" if info.width * info.height > 2**31 else "NO",
        )
        if self._kept:  # blocks not written yet take no space (flushed early, and reopened)
            profile["SPARSE_OK"] = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self._stage, "w", **profile)
            describe_labels(self._ds, nodata=nodata, classes=classes, palette=palette,
                            descriptions=descriptions or [description])
        except (*GDAL_ERRORS, OSError) as exc:
            remove_quietly(self._stage)
            raise OutputError(f"Could not create {self.dest}: {_first_line(exc)}.") from exc

    def write_rows(self, row: int, labels: np.ndarray, col: int = 0) -> None:
        """Write ``labels`` (uint8 ``(rows, width)``, or ``(bands, rows, width)``) at scene row
        ``row`` and column ``col``.

        Any order: a chunk of the scene may arrive before the rows above it.
        """
        h, w = labels.shape[-2:]
        try:
            if labels.ndim == 3:
                self._ds.write(labels, window=Window(col, row, w, h))
            else:
                self._ds.write(labels, 1, window=Window(col, row, w, h))
        except (*GDAL_ERRORS, OSError) as exc:
            self.abort()
            raise OutputError(f"Could not write {self.dest}: {_first_line(exc)}.") from exc

    def close(self) -> Path:
        """Finish: overviews, COG copy, atomic rename. Returns the destination."""
        try:
            self._ds.close()
            _copy_cog(self._stage, self._final_tmp, self.resampling)
            os.replace(self._final_tmp, self.dest)
        except OSError as exc:
            self.abort()
            raise OutputError(describe_os_error(exc, self.dest)) from exc
        except GDAL_ERRORS as exc:
            self.abort()
            raise OutputError(f"Could not finish {self.dest}: {_first_line(exc)}.") from exc
        except BaseException:  # interrupted: a named stage stays for the run that resumes it
            if self._kept:
                remove_quietly(self._final_tmp)
            else:
                remove_quietly(self._stage)
            raise
        remove_quietly(self._stage)
        return self.dest

    def flush(self) -> None:
        """Put every row written so far in the staged file on disk (closed, and reopened for update)."""
        try:
            self._ds.close()
            self._ds = _open_update(self._stage)
        except (*GDAL_ERRORS, OSError) as exc:
            self.abort()
            raise OutputError(f"Could not write {self.dest}: {_first_line(exc)}.") from exc

    def suspend(self) -> None:
        """Close the staged file and keep it, for a later ``LabelWriter(..., stage=, resume=True)``."""
        with contextlib.suppress(Exception):
            self._ds.close()
        remove_quietly(self._final_tmp)

    def abort(self) -> None:
        """Drop everything written so far; the destination is left untouched."""
        with contextlib.suppress(Exception):
            self._ds.close()
        remove_quietly(self._stage)
        remove_quietly(self._final_tmp)

    def __enter__(self) -> LabelWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def describe_labels(ds, *, nodata: int = LABEL_NODATA, classes: Sequence[str] | None = None,
                    palette: Sequence[tuple[int, int, int]] | None = None,
                    descriptions: Sequence[str] = ("labels",)) -> None:
    """Give a label raster open for writing its colour table, class names and band descriptions."""
    if palette:
        cmap = {i: tuple(c) for i, c in enumerate(palette)}
        cmap[nodata] = (0, 0, 0)
        ds.write_colormap(1, cmap)
    if classes:
        ds.update_tags(classes=json.dumps(list(classes)))
        ds.update_tags(1, classes=json.dumps(list(classes)))
    for band, text in enumerate(descriptions, start=1):
        ds.set_band_description(band, text)


def write_label_mosaic(
    dest: str | os.PathLike[str],
    info: SceneInfo,
    parts: Sequence[tuple[str | os.PathLike[str], int, int, int, int]],
    *,
    nodata: int = LABEL_NODATA,
    classes: Sequence[str] | None = None,
    palette: Sequence[tuple[int, int, int]] | None = None,
    description: str = "labels",
    resampling: str = "nearest",
) -> Path:
    """Finish ``dest`` as :meth:`LabelWriter.close` does, from one-band uint8 GeoTIFFs that tile the
    scene: ``parts`` are ``(path, row, col, height, width)`` in scene pixels, tiled in
    ``LABEL_BLOCK`` blocks. A VRT mosaics them, so the COG copy streams: the scene is never
    in memory. Same colour table, class names and nodata as a :class:`LabelWriter`'s output.
    """
    dest = Path(dest)
    parent = check_output_folder(dest)
    remove_stale_temporaries(dest)
    vrt = parent / f".{dest.name}.part-{os.getpid()}.vrt"
    final_tmp = parent / f".{dest.name}.part-{os.getpid()}"
    try:
        vrt.write_text(_mosaic_vrt(info, parts, nodata))
        with _open_update(vrt) as ds:
            describe_labels(ds, nodata=nodata, classes=classes, palette=palette, descriptions=[description])
        _copy_cog(vrt, final_tmp, resampling)
        os.replace(final_tmp, dest)
    except OSError as exc:
        remove_quietly(final_tmp)
        raise OutputError(describe_os_error(exc, dest)) from exc
    except GDAL_ERRORS as exc:
        remove_quietly(final_tmp)
        raise OutputError(f"Could not finish {dest}: {_first_line(exc)}.") from exc
    except BaseException:
        remove_quietly(final_tmp)
        raise
    finally:
        remove_quietly(vrt)
    return dest


def _mosaic_vrt(info: SceneInfo, parts, nodata: int) -> str:
    """The XML of a one-band Byte VRT placing each part at its offset (absolute source paths)."""
    from xml.etree import ElementTree as ET

    root = ET.Element("VRTDataset", rasterXSize=str(info.width), rasterYSize=str(info.height))
    if info.crs is not None:
        ET.SubElement(root, "SRS").text = info.crs.to_wkt()
    if info.transform is not None and not info.transform.is_identity:
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in info.transform.to_gdal())
    band = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band="1")
    ET.SubElement(band, "NoDataValue").text = str(nodata)
    for path, row, col, height, width in parts:
        source = ET.SubElement(band, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(Path(path).absolute())
        ET.SubElement(source, "SourceBand").text = "1"
        ET.SubElement(source, "SourceProperties", RasterXSize=str(width), RasterYSize=str(height),
                      DataType="Byte", BlockXSize=str(LABEL_BLOCK), BlockYSize=str(LABEL_BLOCK))
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(width), ySize=str(height))
        ET.SubElement(source, "DstRect", xOff=str(col), yOff=str(row), xSize=str(width), ySize=str(height))
    return ET.tostring(root, encoding="unicode")


def _open_update(path: Path) -> rasterio.io.DatasetWriter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, "r+")


def _copy_cog(src: Path, dst: Path, resampling: str) -> None:
    """Copy a label raster to a Cloud-Optimized GeoTIFF with overviews."""
    rasterio.shutil.copy(
        src,
        dst,
        driver="COG",
        # LZW: as small as DEFLATE on label maps (+2% at 20,000^2), twice as fast to
        # write (2.3 s against 4.2 s at 20,000^2), and read by every GeoTIFF reader.
        COMPRESS="LZW",
        BLOCKSIZE=LABEL_BLOCK,
        OVERVIEW_RESAMPLING=resampling.upper(),
        BIGTIFF="IF_SAFER",
        NUM_THREADS="ALL_CPUS",  # the scene's last step: nothing else is running
    )


def _first_line(exc: BaseException) -> str:
    """The error's first line; GDAL's own error where rasterio only says to see it."""
    if "See previous exception" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


def sample_tiles(
    scenes: Sequence[str | os.PathLike[str]],
    spec: ModelSpec,
    count: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """``count`` raw-pixel tiles ``(count, bands, tile, tile)`` float32 from ``scenes``, as tiled.

    For latency measurements: windows spread over a regular grid with a
    seeded jitter (reproducible), padded with 0 beyond the scene and on
    nodata as the tiler pads them. Not for calibration, which must see valid
    imagery only: :func:`segbench.export.calibration.calibration_tiles`.
    """
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


def label_targets(label: np.ndarray, nodata: float | None = None, valid: np.ndarray | None = None,
                  ignore_index: int = IGNORE_INDEX, reduce_zero_label: bool = False) -> np.ndarray:
    """Targets for scoring: the label raster's values with ``nodata`` and invalid pixels ignored.

    ``nodata`` is the label raster's nodata value; ``valid`` marks the pixels
    the prediction covers (False: scene nodata). ``reduce_zero_label`` maps
    1-based labels to 0-based ones with 0 ignored, as mmseg does.
    """
    ignored = label == ignore_index
    if nodata is not None:
        ignored |= label == nodata
    if valid is not None:
        ignored |= ~valid
    targets = label.astype(np.int64)
    if reduce_zero_label:
        ignored |= targets == 0
        targets -= 1
    targets[ignored] = ignore_index
    return targets
