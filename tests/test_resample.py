"""``--resample``: a scene segmented at the model's GSD, its labels back on the scene's grid."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segbench.cli import main
from segbench.engines.registry import build, load
from segbench.errors import InputError
from segbench.tiler import plan_windows, segment
from segbench.tiler.resample import segment_resampled
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

TILE = 32


@pytest.fixture(scope="module")
def engine_path(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("engine")
    spec = make_spec(classes=4, tile=TILE).replace(gsd_m=0.5)
    return build(tiny_conv_onnx(d / "model.onnx", spec), "ort-fp32", d)


def _read(path: Path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs


def test_a_finer_scene_is_run_at_the_models_gsd_and_labelled_on_its_own_grid(tmp_path, engine_path):
    """A 0.25 m scene that repeats each pixel of a 0.5 m scene 2x2: resampled (averaging 2x2
    blocks) it is the 0.5 m scene, so its labels are the 0.5 m scene's, each repeated 2x2."""
    base = np.random.default_rng(5).integers(0, 256, (3, 90, 110), dtype=np.uint8)
    coarse = write_scene(tmp_path / "coarse.tif", base, pixel=0.5)
    fine = write_scene(tmp_path / "fine.tif", base.repeat(2, axis=1).repeat(2, axis=2), pixel=0.25)
    with load(engine_path) as engine:
        segment(coarse, engine, tmp_path / "coarse.labels.tif", overlap=8, batch=4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            segment(fine, engine, tmp_path / "plain.labels.tif", overlap=8, batch=4)
        assert any("--resample" in str(w.message) for w in caught)  # 0.25 m against 0.5 m: warned
        result = segment_resampled(fine, engine, tmp_path / "fine.labels.tif", overlap=8, batch=4,
                                   confidence=tmp_path / "fine.conf.tif")
    labels, transform, crs = _read(tmp_path / "fine.labels.tif")
    expected, _, _ = _read(tmp_path / "coarse.labels.tif")
    with rasterio.open(fine) as ds:
        assert (transform, crs, labels.shape[1:]) == (ds.transform, ds.crs, (ds.height, ds.width))
    assert np.array_equal(labels[0], expected[0].repeat(2, axis=0).repeat(2, axis=1))
    assert (result.width, result.height) == (220, 180) and result.windows < 40  # windows of the 0.5 m grid
    conf, _, _ = _read(tmp_path / "fine.conf.tif")
    assert conf.shape == labels.shape and conf.min() > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing staged left


def test_a_scene_at_the_models_gsd_is_not_warped(tmp_path, engine_path):
    scene = write_scene(tmp_path / "s.tif", np.random.default_rng(2).integers(0, 256, (3, 60, 70), np.uint8),
                        pixel=0.5)
    with load(engine_path) as engine:
        segment(scene, engine, tmp_path / "plain.tif", overlap=8, batch=2)
        result = segment_resampled(scene, engine, tmp_path / "resampled.tif", overlap=8, batch=2)
    assert result.windows == len(plan_windows(60, 70, TILE, TILE - 8))
    assert np.array_equal(_read(tmp_path / "plain.tif")[0], _read(tmp_path / "resampled.tif")[0])


def test_resample_needs_both_gsds(tmp_path, engine_path):
    scene = write_scene(tmp_path / "nocrs.tif", np.zeros((3, 40, 40), np.uint8), crs=None)
    with load(engine_path) as engine, pytest.raises(InputError, match="has no CRS"):
        segment_resampled(scene, engine, tmp_path / "labels.tif")
    d = tmp_path / "nogsd"
    d.mkdir()
    other = build(tiny_conv_onnx(d / "model.onnx", make_spec(tile=TILE)), "ort-fp32", d)
    with load(other) as engine, pytest.raises(InputError, match="records none"):
        segment_resampled(write_scene(tmp_path / "s.tif", np.zeros((3, 40, 40), np.uint8)), engine,
                          tmp_path / "labels.tif")
    assert not (tmp_path / "labels.tif").exists()


def test_cli_resample(tmp_path, engine_path, capsys):
    scene = write_scene(tmp_path / "s.tif", np.random.default_rng(1).integers(0, 256, (3, 70, 50), np.uint8),
                        pixel=1.0)
    assert main(["segment", str(scene), "--engine", str(engine_path), "-o", str(tmp_path / "l.tif"),
                 "--batch", "2", "--resample"]) == 0
    labels, transform, _ = _read(tmp_path / "l.tif")
    assert labels.shape == (1, 70, 50) and transform.a == 1.0
    assert main(["segment", str(scene), "--engine", str(engine_path), "-o", str(tmp_path / "d.tif"),
                 "--batch", "2", "--resample", "--workers", "1"]) == 2
    assert "--resample" in capsys.readouterr().err
