"""The tiler on real GeoTIFFs and on the ways input and output go wrong."""

import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from segbench.engines.base import EngineBase
from segbench.engines.registry import build, load
from segbench.errors import InputError
from segbench.spec import ModelSpec
from segbench.tiler import segment
from tests.conftest import make_spec, require_shared, tiny_conv_onnx, write_scene


def _engine(tmp_path, bands, mean, std, tile=64):
    spec = make_spec(bands=bands, tile=tile).replace(mean=(mean,) * bands, std=(std,) * bands)
    onnx_path = tiny_conv_onnx(tmp_path / f"m{bands}.onnx", spec)
    return load(build(onnx_path, "ort-fp32", tmp_path))


@pytest.mark.parametrize("name, bands, mean, std", [
    ("RGB.byte.tif", 3, 60.0, 50.0),  # Landsat, 3-band uint8, nodata 0 borders
    ("solaris_sample_geotiff.tif", 1, 450.0, 200.0),  # 1-band uint16, 0.5 m
])
def test_real_scenes_keep_georeferencing_and_nodata(tmp_path, name, bands, mean, std):
    scene = require_shared(name)
    engine = _engine(tmp_path, bands, mean, std)
    out = tmp_path / "labels.tif"
    result = segment(scene, engine, out, overlap=16, blend="cosine", batch=4)
    with rasterio.open(scene) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.width, dst.height) == \
            (src.crs, src.transform, src.width, src.height)
        assert dst.nodata == 255 and dst.overviews(1)  # a COG with overviews
        labels = dst.read(1)
        valid = src.dataset_mask() > 0
    assert (labels[~valid] == 255).all() and (labels[valid] < 3).all()
    assert result.windows > 0


def test_scene_without_crs_warns_and_goes_on(tmp_path):
    scene = write_scene(tmp_path / "s.tif", np.ones((3, 50, 60), np.uint8), crs=None)
    engine = _engine(tmp_path, 3, 100.0, 50.0, tile=32)
    with pytest.warns(UserWarning, match="no CRS"):
        segment(scene, engine, tmp_path / "l.tif")
    with rasterio.open(tmp_path / "l.tif") as ds:
        assert ds.crs is None and ds.shape == (50, 60)


def test_corrupt_geotiff_stops_with_input_error(tmp_path):
    scene = write_scene(tmp_path / "s.tif", np.random.default_rng(0).integers(
        0, 255, (3, 300, 300), dtype=np.uint8))
    data = scene.read_bytes()
    scene.write_bytes(data[: len(data) // 2])  # truncated: header intact, tiles missing
    engine = _engine(tmp_path, 3, 100.0, 50.0, tile=32)
    with pytest.raises(InputError):
        segment(scene, engine, tmp_path / "l.tif")
    assert not (tmp_path / "l.tif").exists()


class _Interrupting(EngineBase):
    def __init__(self, engine):
        self.spec, self.name, self.device, self._engine, self.calls = engine.spec, "x", "cpu", engine, 0

    def infer(self, tiles):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return self._engine.infer(tiles)

    def close(self):
        pass


def test_ctrl_c_stops_quickly_and_leaves_nothing(tmp_path):
    scene = write_scene(tmp_path / "s.tif", np.ones((3, 400, 400), np.uint8))
    engine = _Interrupting(_engine(tmp_path, 3, 100.0, 50.0, tile=32))
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        segment(scene, engine, tmp_path / "l.tif", batch=2)
    assert time.perf_counter() - start < 5
    assert not any(p.name.startswith((".l", "l.")) for p in tmp_path.iterdir())


def test_full_disk_is_one_sentence_and_leaves_nothing(tmp_path):
    """A file-size limit makes writes fail with EFBIG, as a full disk would with ENOSPC."""
    rng = np.random.default_rng(1)
    scene = write_scene(tmp_path / "s.tif", rng.integers(0, 255, (3, 600, 600), dtype=np.uint8))
    onnx_path = tiny_conv_onnx(tmp_path / "m.onnx", make_spec(tile=64))
    artifact = build(onnx_path, "ort-fp32", tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000))\n"
        "from segbench.cli import main\n"
        f"sys.exit(main(['segment', {str(scene)!r}, '--engine', {str(artifact)!r}, "
        f"'-o', {str(out_dir / 'labels.tif')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert err and err[-1].startswith("segbench: error: "), proc.stderr
    assert list(out_dir.iterdir()) == []
    assert ModelSpec.load(artifact)  # inputs untouched


def test_internal_mask_and_vrt_inputs(tmp_path):
    rng = np.random.default_rng(2)
    scene = write_scene(tmp_path / "masked.tif", rng.integers(1, 255, (3, 80, 90), dtype=np.uint8))
    with rasterio.open(scene, "r+") as ds:  # an internal mask: the left 25 columns are invalid
        mask = np.full((80, 90), 255, np.uint8)
        mask[:, :25] = 0
        ds.write_mask(mask)
    vrt = tmp_path / "scene.vrt"
    rasterio.shutil.copy(scene, vrt, driver="VRT")
    engine = _engine(tmp_path, 3, 100.0, 50.0, tile=32)
    for src in (scene, vrt):
        out = tmp_path / f"{src.stem}-{src.suffix[1:]}-labels.tif"
        segment(src, engine, out, overlap=8)
        with rasterio.open(out) as ds:
            labels = ds.read(1)
        assert (labels[:, :25] == 255).all() and (labels[:, 25:] != 255).all()


def test_ground_sample_distance_in_metres_in_any_crs():
    from pathlib import Path

    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from segbench.raster import SceneInfo

    def info(crs, pixel, north=5_800_000.0):
        return SceneInfo(path=Path("s.tif"), width=100, height=100, count=3, dtype="uint8", crs=crs,
                         transform=from_origin(500_000.0, north, pixel, pixel), nodata=None, has_mask=False)

    assert info(CRS.from_epsg(32633), 0.5).gsd_m == pytest.approx(0.5)
    assert info(CRS.from_epsg(2249), 1.0).gsd_m == pytest.approx(0.3048006)  # US survey feet
    # 1e-4 degrees at 50 N: 7.17 m east-west, 11.12 m north-south (WGS84)
    assert info(CRS.from_epsg(4326), 1e-4, north=50.005).gsd_m == pytest.approx((7.1696 + 11.1229) / 2,
                                                                                  rel=1e-3)
    assert info(None, 0.5).gsd_m is None


@pytest.mark.parametrize("gsd, warns", [(0.5, False), (0.54, False), (0.25, True), (1.0, True)])
def test_segment_warns_when_the_scene_is_not_at_the_models_gsd(tmp_path, gsd, warns):
    import warnings

    pytest.importorskip("onnxruntime")
    from segbench.engines.registry import build, load

    spec = make_spec(tile=32).replace(gsd_m=gsd)
    engine = build(tiny_conv_onnx(tmp_path / "m.onnx", spec), "ort-fp32", tmp_path)
    scene = write_scene(tmp_path / "s.tif", np.full((3, 40, 40), 100, np.uint8), pixel=0.5)
    with warnings.catch_warnings(record=True) as caught, load(engine) as e:
        warnings.simplefilter("always")
        segment(scene, e, tmp_path / "labels.tif", batch=2)
    said = [str(w.message) for w in caught if "ground sample distance" in str(w.message)]
    assert bool(said) == warns
    if warns:
        assert said[0].startswith("s.tif has a ground sample distance of 0.5 m; the model was trained "
                                  f"at {gsd:.3g} m")
