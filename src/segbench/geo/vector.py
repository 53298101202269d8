"""Polygons from a label raster: one per connected region, in bounded memory.

The raster is polygonized in bands of rows (``rasterio.features.shapes``,
4-connected as GDAL's Polygonize) in pixel coordinates, so pieces of one
region meet exactly on band borders. Pieces of the same class that share an
edge across a border are merged (shapely); a region is written as soon as no
later band can touch it. Memory holds one band of labels and the regions
still open at the band's lower edge, whatever the scene's height, and the
polygons equal a whole-array polygonization's. Each polygon carries its class
id, class name and area in square metres (from the CRS's linear unit);
``min_area`` drops smaller ones and ``simplify`` (map units) simplifies each
polygon on its own (neighbours may then no longer share their edges
exactly). Written with pyogrio (GeoPackage, GeoJSON or FlatGeobuf, by the
file's extension) in batches, under a temporary name until complete.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.windows import Window

from segbench.errors import OutputError, UsageError, first_line
from segbench.extras import require
from segbench.files import check_output_folder, describe_os_error, remove_quietly, temporary_path
from segbench.raster import LABEL_NODATA, open_raster

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}
#: rows polygonized at once
BAND_ROWS = 1024
#: polygons written per batch
BATCH = 10_000
FIELDS = ["class_id", "class_name", "area_m2"]
#: GeoPackage 1.2, which every reader opens (QGIS 3.22's GDAL warns about GDAL 3.12's default, 1.4)
DATASET_OPTIONS = {"GPKG": {"VERSION": "1.2"}}


@dataclass(frozen=True)
class VectorResult:
    """What polygonizing a label raster made."""

    path: str
    polygons: int
    dropped: int  # smaller than min_area
    seconds: float


def driver_for(dest: str | os.PathLike[str]) -> str:
    """The OGR driver for ``dest``'s extension; one sentence for any other."""
    suffix = Path(dest).suffix.lower()
    if suffix not in DRIVERS:
        raise UsageError(f"Cannot write polygons to {Path(dest).name}: use a .gpkg, .geojson or .fgb file.")
    return DRIVERS[suffix]


def polygonize(labels: str | os.PathLike[str], dest: str | os.PathLike[str], classes: list[str] | tuple,
               *, min_area: float = 0.0, simplify: float = 0.0, band_rows: int = BAND_ROWS) -> VectorResult:
    """Write one polygon per connected region of ``labels`` (nodata excluded) to ``dest``."""
    require("shapely", "--vector (the 'gis' extra)")
    require("pyogrio", "--vector (the 'gis' extra)")
    from rasterio.features import shapes

    driver = driver_for(dest)
    dest = Path(dest)
    check_output_folder(dest)
    start = time.perf_counter()
    with open_raster(labels) as ds:
        nodata = LABEL_NODATA if ds.nodata is None else int(ds.nodata)
        out = _PolygonWriter(dest, driver, ds.crs, ds.transform, classes, min_area, simplify)
        try:
            regions = _Regions(ds.height)
            for row in range(0, ds.height, band_rows):
                rows = min(band_rows, ds.height - row)
                band = ds.read(1, window=Window(0, row, ds.width, rows))
                pieces = [(int(value), geom) for geom, value in
                          shapes(band, mask=band != nodata, connectivity=4,
                                 transform=Affine.translation(0, row))]
                out.add(regions.add_band(row, row + rows, pieces))
            out.add(regions.close())
            out.finish()
        except BaseException:
            out.abort()
            raise
    return VectorResult(str(dest), out.count, out.dropped, time.perf_counter() - start)


class _Regions:
    """Regions of pixel-space polygons, merged across band borders; hands out the finished ones."""

    def __init__(self, height: int) -> None:
        self.height = height
        self.open: list[tuple[int, object]] = []  # (class, polygon) touching the last band's lower edge

    def add_band(self, top: int, bottom: int, pieces: list[tuple[int, dict]]) -> list[tuple[int, object]]:
        """Merge a band's pieces with the open regions; returns the regions that are finished."""
        import shapely
        from shapely.geometry import shape

        geoms = [(value, shape(g)) for value, g in pieces]
        old, n = self.open, len(self.open)
        parent = list(range(n + len(geoms)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        if old:
            tree = shapely.STRtree([g for _, g in old])
            for j, (value, piece) in enumerate(geoms):
                if piece.bounds[1] != top:  # does not reach the band's upper edge
                    continue
                for i in tree.query(piece):
                    # same class, and an edge in common (4-connected), not a corner
                    if old[i][0] == value and old[i][1].relate_pattern(piece, "****1****"):
                        parent[find(int(i))] = find(n + j)
        members: dict[int, list[int]] = {}
        for k in range(len(parent)):
            members.setdefault(find(k), []).append(k)
        everything = old + geoms
        finished, still_open = [], []
        for group in members.values():
            value = everything[group[0]][0]
            geom = everything[group[0]][1] if len(group) == 1 else shapely.union_all(
                [everything[k][1] for k in group])
            touches_next = bottom < self.height and geom.bounds[3] == bottom
            reaches_band = any(k >= n for k in group)
            if touches_next and reaches_band:
                still_open.append((value, geom))
            else:
                finished.append((value, geom))
        self.open = still_open
        return finished

    def close(self) -> list[tuple[int, object]]:
        finished, self.open = self.open, []
        return finished


class _PolygonWriter:
    """Regions to map coordinates, filtered and simplified, written in batches under a temporary name."""

    def __init__(self, dest: Path, driver: str, crs, transform, classes, min_area: float,
                 simplify: float) -> None:
        self.dest, self.driver, self.classes = dest, driver, list(classes)
        self.crs_object, self.crs = crs, (crs.to_wkt() if crs else None)
        t = transform
        self.matrix = [t.a, t.b, t.d, t.e, t.c, t.f]
        self.min_area, self.simplify = min_area, simplify
        self.tmp = temporary_path(dest)
        remove_quietly(self.tmp)  # one this process left: pyogrio would append to it
        self.layer = re.sub(r"\W", "_", dest.stem)  # the final file's name, as GDAL would call it
        self.pending: list[tuple[int, object]] = []
        self.count = self.dropped = 0
        self.started = False

    def add(self, regions: list[tuple[int, object]]) -> None:
        self.pending.extend(regions)
        if len(self.pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        import shapely
        from pyogrio.raw import write

        if not self.pending and self.started:
            return
        values = np.array([v for v, _ in self.pending], dtype=np.int32)
        a, b, d, e, c, f = self.matrix
        mapped = shapely.transform(np.array([g for _, g in self.pending], dtype=object),
                                   lambda xy: xy @ np.array([[a, d], [b, e]]) + np.array([c, f]))
        self.pending = []
        if self.simplify > 0 and len(mapped):
            mapped = shapely.simplify(mapped, self.simplify, preserve_topology=True)
        areas = _areas_m2(mapped, self.crs_object)
        keep = areas >= self.min_area
        self.dropped += int((~keep).sum())
        values, mapped, areas = values[keep], mapped[keep], areas[keep]
        names = np.array([self.classes[v] if v < len(self.classes) else str(v) for v in values], dtype=object)
        try:
            write(str(self.tmp), shapely.to_wkb(mapped), [values, names, areas], FIELDS, driver=self.driver,
                  layer=self.layer, geometry_type="Polygon", crs=self.crs, append=self.started,
                  dataset_options=DATASET_OPTIONS.get(self.driver) if not self.started else None)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.dest)) from exc
        except Exception as exc:  # pyogrio's own errors for GDAL failures
            raise OutputError(f"Could not write {self.dest}: {first_line(exc)}.") from exc
        self.started = True
        self.count += len(values)

    def finish(self) -> None:
        self._flush()
        try:
            os.replace(self.tmp, self.dest)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.dest)) from exc

    def abort(self) -> None:
        remove_quietly(self.tmp)


#: the mean Earth radius (IUGG), for areas in a geographic CRS
EARTH_RADIUS_M = 6_371_008.8


def _areas_m2(geoms: np.ndarray, crs) -> np.ndarray:
    """Areas in square metres: a projected CRS's units scaled to metres; in degrees, each
    polygon's area on the sphere at its centroid's latitude (within 0.5% of the ellipsoid's
    for regions far smaller than the Earth)."""
    import shapely

    if not len(geoms):
        return np.zeros(0)
    areas = shapely.area(geoms)
    if crs is None:
        return areas
    if crs.is_geographic:
        lat = np.radians(shapely.get_y(shapely.centroid(geoms)))
        return areas * (np.pi / 180 * EARTH_RADIUS_M) ** 2 * np.cos(lat)
    return areas * float(crs.linear_units_factor[1]) ** 2
