"""Polygons from label rasters: equal to a whole-array polygonization, streamed in row bands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.transform import from_origin

from segbench.errors import OutputError, UsageError
from segbench.raster import write_raster
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

shapely = pytest.importorskip("shapely", reason="the 'gis' extra is not installed")
pyogrio = pytest.importorskip("pyogrio", reason="the 'gis' extra is not installed")

from segbench.geo.vector import polygonize  # noqa: E402

SEGBENCH = Path(sys.executable).with_name("segbench")
CLASSES = ["road", "building", "tree", "water"]


def _labels(path: Path, labels: np.ndarray, crs: CRS | None = None, pixel=0.5, west=500_000.0,
            north=5_800_000.0) -> Path:
    crs = crs or CRS.from_epsg(32633)
    return write_raster(path, labels[None], crs=crs, transform=from_origin(west, north, pixel, pixel),
                        nodata=255)


def _blobs(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Classes in blobs of many sizes (regions that cross many row bands), a nodata corner, and
    diagonal-only contacts (not connected under 4-connectivity)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, len(CLASSES), (h // 8 + 1, w // 8 + 1)).astype(np.uint8)
    labels = np.kron(small, np.ones((8, 8), np.uint8))[:h, :w]
    labels[rng.random((h, w)) < 0.02] = 3  # single pixels
    labels[:20, :30] = 255
    labels[50:52, 50:52] = [[1, 2], [2, 1]]  # a checkerboard: corner contacts only
    return labels


def _read(path: Path) -> list[tuple[int, str, float, object]]:
    _, _, geometry, fields = pyogrio.raw.read(path)
    return [(int(c), n, float(a), shapely.from_wkb(g)) for c, n, a, g in zip(*fields, geometry, strict=True)]


def _whole(labels: np.ndarray, transform) -> list[tuple[int, object]]:
    return [(int(v), shapely.geometry.shape(g))
            for g, v in shapes(labels, mask=labels != 255, connectivity=4, transform=transform)]


@pytest.mark.parametrize("band_rows", [7, 64, 100_000])
def test_polygons_equal_a_whole_array_polygonization(tmp_path, band_rows):
    labels = _blobs(301, 257)
    raster = _labels(tmp_path / "labels.tif", labels)
    with rasterio.open(raster) as ds:
        transform = ds.transform
    result = polygonize(raster, tmp_path / "regions.gpkg", CLASSES, band_rows=band_rows)
    got = _read(tmp_path / "regions.gpkg")
    want = _whole(labels, transform)
    assert result.polygons == len(got) == len(want)
    # the same regions: each polygon equals one of the whole-array polygonization, same class
    by_key = {(v, round(g.area, 4), round(g.centroid.x, 3), round(g.centroid.y, 3)): g for v, g in want}
    for cls, name, area, geom in got:
        match = by_key.pop((cls, round(geom.area, 4), round(geom.centroid.x, 3), round(geom.centroid.y, 3)))
        assert geom.equals(match)
        assert name == CLASSES[cls]
        assert area == pytest.approx(match.area, rel=1e-6)  # metres: the CRS's unit
    assert not by_key


def test_min_area_and_simplify(tmp_path):
    labels = _blobs(200, 200, seed=1)
    raster = _labels(tmp_path / "labels.tif", labels)
    full = polygonize(raster, tmp_path / "all.gpkg", CLASSES)
    pruned = polygonize(raster, tmp_path / "big.gpkg", CLASSES, min_area=16 * 0.25)  # 16 pixels
    assert pruned.dropped > 0 and pruned.polygons + pruned.dropped == full.polygons
    assert min(a for _, _, a, _ in _read(tmp_path / "big.gpkg")) >= 4.0
    polygonize(raster, tmp_path / "simple.gpkg", CLASSES, simplify=1.0)
    vertices = [sum(len(g.exterior.coords) for *_, g in _read(tmp_path / name))
                for name in ("all.gpkg", "simple.gpkg")]
    assert vertices[1] < vertices[0]


@pytest.mark.parametrize("suffix, driver", [(".geojson", "GeoJSON"), (".fgb", "FlatGeobuf")])
def test_other_formats_by_extension(tmp_path, suffix, driver):
    raster = _labels(tmp_path / "labels.tif", _blobs(64, 64))
    result = polygonize(raster, tmp_path / f"regions{suffix}", CLASSES, band_rows=16)
    info = pyogrio.read_info(tmp_path / f"regions{suffix}")
    assert info["driver"] == driver and info["features"] == result.polygons
    assert list(info["fields"]) == ["class_id", "class_name", "area_m2"]


def test_areas_in_a_geographic_crs_are_in_square_metres(tmp_path):
    labels = np.full((100, 100), 255, np.uint8)
    labels[10:60, 20:90] = 2  # 50 x 70 pixels of 1e-4 degrees at about 50 N
    raster = _labels(tmp_path / "wgs84.tif", labels, crs=CRS.from_epsg(4326), pixel=1e-4, west=10.0,
                     north=50.005)
    polygonize(raster, tmp_path / "regions.gpkg", CLASSES)
    ((_, _, area, _),) = _read(tmp_path / "regions.gpkg")
    radius = 6_371_008.8  # on the sphere: R^2 * dlon * (sin(lat2) - sin(lat1))
    lat2, lat1 = np.radians(50.005 - 10e-4), np.radians(50.005 - 60e-4)
    exact = radius ** 2 * np.radians(70e-4) * (np.sin(lat2) - np.sin(lat1))
    assert area == pytest.approx(exact, rel=1e-4)
    assert 2.7e5 < area < 2.85e5  # 50 x 70 pixels of about 7.2 m x 11.1 m


def test_bad_paths_are_one_sentence_and_leave_nothing(tmp_path):
    raster = _labels(tmp_path / "labels.tif", _blobs(64, 64))
    with pytest.raises(UsageError, match="use a .gpkg, .geojson or .fgb file"):
        polygonize(raster, tmp_path / "regions.shp", CLASSES)
    with pytest.raises(OutputError, match="missing does not exist"):
        polygonize(raster, tmp_path / "missing" / "regions.gpkg", CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]


def test_segment_writes_polygons_beside_each_scene(tmp_path):
    pytest.importorskip("onnxruntime")
    from segbench.engines.registry import build

    engine = build(tiny_conv_onnx(tmp_path / "m.onnx", make_spec(tile=32)), "ort-fp32", tmp_path)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(2):
        write_scene(scenes / f"s{i}.tif", np.random.default_rng(i).integers(1, 256, (3, 90, 110), np.uint8))
    out = tmp_path / "out"
    done = subprocess.run([str(SEGBENCH), "segment", str(scenes), "--engine", str(engine), "-o", str(out),
                           "--batch", "2", "--vector", str(tmp_path / "any.fgb")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for i in range(2):
        with rasterio.open(out / f"s{i}.labels.tif") as ds:
            want = _whole(ds.read(1), ds.transform)
        assert len(_read(out / f"s{i}.polygons.fgb")) == len(want) > 0
    # several scenes into an -o that ends in .tif (a folder then): still one polygon file per scene
    tif = tmp_path / "out.tif"
    done = subprocess.run([str(SEGBENCH), "segment", str(scenes), "--engine", str(engine), "-o", str(tif),
                           "--batch", "2", "--vector", str(tmp_path / "one.gpkg")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tif.glob("*.gpkg")) == ["s0.polygons.gpkg", "s1.polygons.gpkg"]
    assert not (tmp_path / "one.gpkg").exists()
    bad = subprocess.run([str(SEGBENCH), "segment", str(scenes), "--engine", str(engine), "-o",
                          str(tmp_path / "out2"), "--vector", str(tmp_path / "x.shp")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "use a .gpkg, .geojson or .fgb file" in bad.stderr
    assert not (tmp_path / "out2").exists()  # refused before any work
