"""Calibration tiles are whole windows of valid imagery: no padding, no nodata fill."""

import numpy as np
import pytest

from segbench.errors import InputError
from segbench.export.calibration import calibration_tiles
from segbench.raster import open_raster
from tests.conftest import make_spec, require_shared, write_scene


def _nodata_pixels(tiles, nodata=0):
    """Pixels whose every band holds the nodata value (what fill looks like)."""
    return int(np.all(tiles == nodata, axis=1).sum())


def test_same_seed_same_tiles_and_another_seed_others(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [write_scene(tmp_path / f"s{i}.tif", rng.integers(1, 256, (3, 150, 170), dtype=np.uint8))
              for i in range(2)]
    spec = make_spec(tile=32)
    a = calibration_tiles(scenes, spec, count=10, seed=4)
    b = calibration_tiles(scenes, spec, count=10, seed=4)
    c = calibration_tiles(scenes, spec, count=10, seed=5)
    assert a.shape == (10, 3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({t.tobytes() for t in a}) == 10  # ten different windows


def test_nodata_region_is_never_sampled(tmp_path):
    data = np.random.default_rng(1).integers(1, 256, (3, 200, 200), dtype=np.uint8)
    data[:, :, :120] = 0  # the left 60% of the scene is nodata
    data[:, 150:, :] = 0
    scene = write_scene(tmp_path / "holes.tif", data, nodata=0)
    tiles = calibration_tiles([scene], make_spec(tile=32), count=12, seed=0)
    assert len(tiles) == 12 and _nodata_pixels(tiles) == 0


def test_real_scene_with_nodata_borders(tmp_path):
    path = require_shared("RGB.byte.tif")
    with open_raster(path) as ds:
        assert ds.nodata == 0
    for tile, count in ((32, 40), (128, 8)):
        tiles = calibration_tiles([path], make_spec(tile=tile), count=count, seed=0)
        assert tiles.shape == (count, 3, tile, tile)
        assert _nodata_pixels(tiles) == 0, f"tile {tile}: nodata fill in calibration tiles"


def test_scene_smaller_than_a_tile_gives_no_padded_tiles(tmp_path):
    rng = np.random.default_rng(2)
    small = write_scene(tmp_path / "small.tif", np.full((3, 20, 50), 77, np.uint8))
    large = write_scene(tmp_path / "large.tif", rng.integers(100, 200, (3, 90, 90), dtype=np.uint8))
    spec = make_spec(tile=32)
    tiles = calibration_tiles([small, large], spec, count=6, seed=0)
    assert len(tiles) == 6
    assert not np.any(tiles == 77) and not np.any(tiles == 0)  # nothing from, or padding of, small
    with pytest.raises(InputError, match="smaller than"):
        calibration_tiles([small], spec, count=4)


def test_fewer_tiles_than_scenes(tmp_path):
    scenes = [write_scene(tmp_path / f"s{i}.tif", np.full((3, 64, 64), 10 * (i + 1), np.uint8))
              for i in range(5)]
    tiles = calibration_tiles(scenes, make_spec(tile=32), count=3, seed=0)
    assert tiles.shape == (3, 3, 32, 32)
    sources = {int(t[0, 0, 0]) for t in tiles}
    assert len(sources) == 3  # one tile from each of three different scenes
    seen = {int(t[0, 0, 0]) for seed in range(8)
            for t in calibration_tiles(scenes, make_spec(tile=32), count=3, seed=seed)}
    assert len(seen) == 5  # the seed picks which scenes, not always the first three


def test_a_held_out_scene_gives_every_disjoint_window_it_holds(tmp_path):
    """Four scenes of 64 x 64 at tile 32: the one held out holds four windows that overlap no other
    (its tile grid), and all four are drawn; windows placed at random first gave one or two."""
    from segbench.export.calibration import calibration_set

    rng = np.random.default_rng(2)
    scenes = [write_scene(tmp_path / f"s{i}.tif", rng.integers(1, 256, (3, 64, 64), dtype=np.uint8))
              for i in range(4)]
    for seed in range(3):
        drawn = calibration_set(scenes, make_spec(tile=32), count=8, held_out=16, seed=seed)
        assert len(drawn.held_out_scenes) == 1
        assert sorted((r, c) for _, r, c in drawn.held_out_windows) == [(0, 0), (0, 32), (32, 0), (32, 32)]
