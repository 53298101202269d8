"""``--resample``: segment a scene at the model's ground sample distance, labels on the scene's grid.

A model sees objects at the size it was trained at. The scene is read
through a GDAL warped VRT in its own CRS with pixels of the model's GSD
(``average`` when that is coarser than the scene's, ``bilinear`` when finer),
written to a temporary folder beside the output, so the tiler's reader
opens it like any scene. The outputs come back onto the scene's own grid by
a second warp (``nearest``: class values are never averaged), streamed in
row bands into the final COGs; the temporary folder is removed whatever
happens.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from segbench.engines.base import Engine
from segbench.errors import InputError
from segbench.files import check_output_folder
from segbench.peak import peak_rss_bytes
from segbench.raster import LABEL_BLOCK, SceneInfo, open_raster, scene_info
from segbench.tiler.pipeline import SegmentResult, segment
from segbench.tiler.stages import open_outputs

#: rows warped back at once (label blocks; bounds the memory at any width)
ROWS = 4 * LABEL_BLOCK


def model_grid(info: SceneInfo, gsd_m: float) -> tuple[rasterio.Affine, int, int, float]:
    """The scene's extent in pixels of ``gsd_m`` metres: ``(transform, width, height, scale)``,
    ``scale`` being the model's pixel over the scene's."""
    scale = gsd_m / info.gsd_m
    transform = info.transform @ rasterio.Affine.scale(scale)
    return transform, math.ceil(info.width / scale), math.ceil(info.height / scale), scale


def segment_resampled(scene: str | os.PathLike[str], engine: Engine, out: str | os.PathLike[str], *,
                      confidence: str | os.PathLike[str] | None = None,
                      probabilities: str | os.PathLike[str] | None = None,
                      **options) -> SegmentResult:
    """:func:`~segbench.tiler.segment` on ``scene`` resampled to the model's GSD, its outputs
    warped back onto the scene's grid (same options as ``segment``)."""
    spec = engine.spec
    with open_raster(scene) as ds:
        info = scene_info(ds)
    if not spec.gsd_m:
        raise InputError(f"--resample needs the ground sample distance {engine.name}'s model was "
                         "trained at, and its spec records none.")
    if info.gsd_m is None:
        raise InputError(f"--resample needs the scene's ground sample distance, and "
                         f"{info.path.name} has no CRS.")
    if math.isclose(model_grid(info, spec.gsd_m)[3], 1.0, rel_tol=1e-6):  # already at the model's GSD
        return segment(scene, engine, out, confidence=confidence, probabilities=probabilities, **options)
    out = Path(out)
    for dest in filter(None, (out, confidence, probabilities)):
        check_output_folder(dest)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.resample-", dir=out.parent))
    try:
        vrt = _warped_scene(scene, info, spec.gsd_m, work / "scene.vrt")
        staged = [work / "labels.tif", work / "confidence.tif" if confidence else None,
                  work / "probabilities.tif" if probabilities else None]
        result = segment(vrt, engine, staged[0], confidence=staged[1], probabilities=staged[2], **options)
        _warp_back(staged, info, spec, (out, confidence, probabilities))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return SegmentResult(
        scene=str(scene), output=str(out), confidence=str(confidence) if confidence else None,
        probabilities=str(probabilities) if probabilities else None, width=info.width,
        height=info.height, windows=result.windows, skipped=result.skipped, batches=result.batches,
        seconds=time.perf_counter() - start, stages=result.stages, peak_rss_bytes=peak_rss_bytes())


def _warped_scene(scene, info: SceneInfo, gsd_m: float, dest: Path) -> Path:
    """Write the warped VRT of ``scene`` at ``gsd_m`` to ``dest``."""
    transform, width, height, scale = model_grid(info, gsd_m)
    resampling = Resampling.average if scale > 1 else Resampling.bilinear
    with open_raster(scene) as src, WarpedVRT(src, crs=src.crs, transform=transform, width=width,
                                              height=height, resampling=resampling) as vrt:
        rasterio.shutil.copy(vrt, dest, driver="VRT")
    return dest


def _warp_back(staged: list[Path | None], info: SceneInfo, spec, finals: tuple) -> None:
    """Each staged output nearest-warped onto the scene's grid, into its final COG."""
    writers: list = []
    try:
        open_outputs(writers, info, spec, *finals)
        for path, writer in zip(staged, writers, strict=True):
            if writer is None:
                continue
            with rasterio.open(path) as src, WarpedVRT(
                    src, crs=info.crs, transform=info.transform, width=info.width, height=info.height,
                    resampling=Resampling.nearest, nodata=src.nodata) as vrt:
                for row in range(0, info.height, ROWS):
                    window = Window(0, row, info.width, min(ROWS, info.height - row))
                    bands = vrt.read(window=window)
                    writer.write_rows(row, bands[0] if len(bands) == 1 else bands)
        for writer in filter(None, writers):
            writer.close()
    except BaseException:
        for writer in filter(None, writers):
            writer.abort()
        raise
