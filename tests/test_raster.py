import numpy as np
import pytest
import rasterio

from segbench.errors import InputError, OutputError
from segbench.raster import LabelWriter, check_bands, open_raster, read_window, scene_info
from tests.conftest import make_spec, write_scene


def test_missing_and_non_geotiff_inputs_say_so(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_raster(tmp_path / "nope.tif")
    bad = tmp_path / "notes.tif"
    bad.write_text("this is not a raster")
    with pytest.raises(InputError, match="not a readable GeoTIFF"):
        open_raster(bad)
    with pytest.raises(InputError, match="is a folder"):
        open_raster(tmp_path)


def test_truncated_geotiff_is_refused(tmp_path, scene):
    data = scene.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError):
        with open_raster(cut) as ds:
            read_window(ds, 0, 0, 100, 130, [1, 2, 3])


def test_band_check_names_the_problem(scene):
    with open_raster(scene) as ds:
        info = scene_info(ds)
    check_bands(info, make_spec(bands=3))
    with pytest.raises(InputError, match="has 3 band"):
        check_bands(info, make_spec(bands=4))


def test_read_window_overhangs_with_fill_and_mask(tmp_path):
    data = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30) + 1
    data[:, :2, :] = 0  # nodata rows at the top
    path = write_scene(tmp_path / "s.tif", data, nodata=0)
    with open_raster(path) as ds:
        pixels, valid = read_window(ds, -4, 25, 16, 16, [3, 1], fill=-1)
    assert pixels.shape == (2, 16, 16) and pixels.dtype == np.float32
    # Inside the scene and below the nodata rows: exact values, bands in the asked order.
    np.testing.assert_array_equal(pixels[0, 6:16, 0:5], data[2, 2:12, 25:30])
    np.testing.assert_array_equal(pixels[1, 6:16, 0:5], data[0, 2:12, 25:30])
    assert valid[6:16, 0:5].all()
    # Outside the scene and nodata pixels: invalid and filled.
    assert not valid[:6].any() and not valid[:, 5:].any()
    assert (pixels[:, :6] == -1).all() and (pixels[:, :, 5:] == -1).all()


def test_label_writer_makes_a_georeferenced_cog(tmp_path, scene):
    with open_raster(scene) as ds:
        info = scene_info(ds)
    out = tmp_path / "labels.tif"
    spec = make_spec()
    with LabelWriter(out, info, classes=spec.classes, palette=spec.palette) as writer:
        for row in range(0, info.height, 30):
            rows = min(30, info.height - row)
            writer.write_rows(row, np.full((rows, info.width), row % 3, np.uint8))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with rasterio.open(out) as ds:
        assert ds.crs == info.crs and ds.transform == info.transform
        assert (ds.width, ds.height, ds.nodata) == (info.width, info.height, 255)
        assert ds.colormap(1)[1][:3] == spec.palette[1]
        assert "class1" in ds.tags()["classes"]
        assert ds.profile["tiled"] and ds.compression is not None
        assert ds.read(1)[35, 0] == 30 % 3


def test_label_writer_abort_leaves_nothing(tmp_path, scene):
    with open_raster(scene) as ds:
        info = scene_info(ds)
    out = tmp_path / "labels.tif"
    with pytest.raises(RuntimeError):
        with LabelWriter(out, info) as writer:
            writer.write_rows(0, np.zeros((10, info.width), np.uint8))
            raise RuntimeError("engine failed")
    assert list(tmp_path.glob("*labels*")) == [] and list(tmp_path.glob(".*")) == []


def test_leftovers_of_killed_writers_are_removed(tmp_path, scene):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    alive = os.getppid()
    stale = [tmp_path / f".labels.tif.stage-{dead}.tif", tmp_path / f".labels.tif.part-{dead}"]
    kept = [tmp_path / f".labels.tif.stage-{alive}.tif", tmp_path / f".other.tif.part-{dead}"]
    for path in stale + kept:
        path.write_bytes(b"partial")
    with open_raster(scene) as ds:
        info = scene_info(ds)
    with LabelWriter(tmp_path / "labels.tif", info) as writer:
        writer.write_rows(0, np.zeros((info.height, info.width), np.uint8))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_unwritable_output_folder_is_one_sentence(tmp_path, scene):
    with open_raster(scene) as ds:
        info = scene_info(ds)
    with pytest.raises(OutputError, match="does not exist"):
        LabelWriter(tmp_path / "missing" / "x.tif", info)
