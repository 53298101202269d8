"""--aoi: only the area of interest is segmented; the rest is nodata, in any CRS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom

from tests.conftest import make_spec, tiny_conv_onnx, write_scene

shapely = pytest.importorskip("shapely", reason="the 'gis' extra is not installed")
pyogrio = pytest.importorskip("pyogrio", reason="the 'gis' extra is not installed")

SEGBENCH = Path(sys.executable).with_name("segbench")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A scene, a tiny engine, the scene segmented whole, and an L-shaped AOI in the scene's CRS."""
    pytest.importorskip("onnxruntime")
    from segbench.engines.registry import build

    root = tmp_path_factory.mktemp("aoi")
    engine = build(tiny_conv_onnx(root / "m.onnx", make_spec(tile=32)), "ort-fp32", root)
    pixels = np.random.default_rng(6).integers(1, 256, (3, 200, 240), np.uint8)
    scene = write_scene(root / "scene.tif", pixels)
    full = root / "full.tif"
    assert _segment(scene, engine, full).returncode == 0
    with rasterio.open(scene) as ds:
        t, crs = ds.transform, ds.crs
    x0, y0 = t * (30, 20)  # an L inside the scene, in map coordinates
    x1, y1 = t * (150, 170)
    xm, ym = t * (80, 90)
    polygon = shapely.Polygon([(x0, y0), (x1, y0), (x1, ym), (xm, ym), (xm, y1), (x0, y1)])
    return root, scene, engine, full, polygon, crs


def _segment(scene, engine, out, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([str(SEGBENCH), "segment", str(scene), "--engine", str(engine), "-o", str(out),
                           "--batch", "2", *map(str, extra)], capture_output=True, text=True, timeout=300)


def _write_aoi(path: Path, polygon, crs) -> Path:
    pyogrio.raw.write(path, np.array([shapely.to_wkb(polygon)], dtype=object), [np.array([1])], ["id"],
                      geometry_type="Polygon", crs=str(crs))
    return path


def _check(labels_path: Path, full_path: Path, polygon_in_scene_crs) -> None:
    with rasterio.open(labels_path) as a, rasterio.open(full_path) as b:
        got, want, nodata = a.read(1), b.read(1), a.nodata
        inside = geometry_mask([polygon_in_scene_crs], got.shape, a.transform, invert=True)
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(got[inside], want[inside])
    assert (got[~inside] == nodata).all()


def test_an_aoi_run_equals_the_full_run_inside_and_is_nodata_outside(setup, tmp_path):
    root, scene, engine, full, polygon, crs = setup
    aoi = _write_aoi(tmp_path / "aoi.gpkg", polygon, crs)
    done = _segment(scene, engine, tmp_path / "labels.tif", "--aoi", aoi)
    assert done.returncode == 0, done.stderr
    _check(tmp_path / "labels.tif", full, polygon)


def test_an_aoi_in_another_crs_is_reprojected(setup, tmp_path):
    root, scene, engine, full, polygon, crs = setup
    lonlat = shapely.geometry.shape(transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(polygon)))
    aoi = _write_aoi(tmp_path / "aoi.geojson", lonlat, "EPSG:4326")
    done = _segment(scene, engine, tmp_path / "labels.tif", "--aoi", aoi)
    assert done.returncode == 0, done.stderr
    back = transform_geom("EPSG:4326", crs, shapely.geometry.mapping(lonlat))
    _check(tmp_path / "labels.tif", full, back)


def test_the_same_aoi_on_dask(setup, tmp_path):
    pytest.importorskip("distributed")
    root, scene, engine, full, polygon, crs = setup
    aoi = _write_aoi(tmp_path / "aoi.gpkg", polygon, crs)
    done = _segment(scene, engine, tmp_path / "labels.tif", "--aoi", aoi, "--workers", 1, "--chunk", 256)
    assert done.returncode == 0, done.stderr
    _check(tmp_path / "labels.tif", full, polygon)


def test_an_aoi_that_misses_the_scene_is_one_sentence(setup, tmp_path):
    root, scene, engine, full, polygon, crs = setup
    far = shapely.affinity.translate(polygon, xoff=10_000)
    aoi = _write_aoi(tmp_path / "far.gpkg", far, crs)
    out = tmp_path / "out"
    out.mkdir()
    done = _segment(scene, engine, out / "labels.tif", "--aoi", aoi)
    assert done.returncode == 1
    assert done.stderr == "segbench: error: Area of interest far.gpkg does not overlap scene scene.tif.\n"
    assert list(out.iterdir()) == []
    missing = _segment(scene, engine, out / "labels.tif", "--aoi", tmp_path / "nope.gpkg")
    assert missing.returncode == 1 and "nope.gpkg does not exist" in missing.stderr
