"""``segment`` as a library (segbench.workflow), called directly: what the command does, with typed
results, hooks for progress and cancelling, and the engine's spec read once."""

import importlib.util

import numpy as np
import pytest
import rasterio

from segbench.engines.registry import build
from segbench.errors import OutputError, UsageError
from segbench.files import sha256_file
from segbench.spec import ModelSpec
from segbench.workflow import (
    Cancelled,
    Hooks,
    SceneDone,
    SegmentJob,
    SegmentOptions,
    SegmentRun,
    segment_scenes,
)
from tests.conftest import write_scene

HAS_STAC = importlib.util.find_spec("pystac") is not None
HAS_GIS = importlib.util.find_spec("pyogrio") is not None and importlib.util.find_spec("shapely") is not None


@pytest.fixture
def engine(tmp_path, tiny_onnx):
    return build(tiny_onnx, "ort-fp32", tmp_path / "engines")


def _scene(path, seed=0, shape=(3, 70, 90)):
    return write_scene(path, np.random.default_rng(seed).integers(1, 256, shape, dtype=np.uint8))


def test_one_scene_with_its_sidecars_and_typed_results(tmp_path, engine):
    scene = _scene(tmp_path / "scene.tif")
    out = tmp_path / "labels.tif"
    heard, done = [], []
    vector = tmp_path / "regions.geojson" if HAS_GIS else None
    options = SegmentOptions(batch=2, confidence=True, vector=vector)
    run = segment_scenes([scene], engine, out, options,
                         hooks=Hooks(progress=heard.append, scene_done=done.append))
    assert isinstance(run, SegmentRun) and run.batch == 2 and run.batch_choice is None
    assert run.worker_peaks is None and run.peak_rss_bytes > 0
    (scene_done,) = run.scenes
    assert isinstance(scene_done, SceneDone) and done == [scene_done]
    assert scene_done.result.output == str(out) and scene_done.line().startswith(f"{out}: ")
    with rasterio.open(out) as labels, rasterio.open(scene) as src:
        assert (labels.crs, labels.transform, labels.shape) == (src.crs, src.transform, src.shape)
    for sidecar in ("labels.qml", "labels.tif.aux.xml", "labels.confidence.qml"):
        assert (tmp_path / sidecar).is_file(), sidecar
    assert (tmp_path / "labels.stac.json").is_file() == HAS_STAC
    if vector is not None:
        assert vector.is_file() and "polygons in" in scene_done.polygons
    assert heard and heard[-1].done == heard[-1].total and {p.scene for p in heard} == {0}


def test_outputs_that_would_replace_inputs_are_refused_before_any_work(tmp_path, engine):
    scene = _scene(tmp_path / "scene.tif")
    named = _scene(tmp_path / "labels.confidence.tif", seed=1)
    before = {p: sha256_file(p) for p in (scene, named)}
    with pytest.raises(OutputError, match="would replace the input"):
        segment_scenes([scene], engine, scene, SegmentOptions(batch=2))
    with pytest.raises(OutputError, match="would replace the input"):  # the confidence raster
        SegmentJob.plan([named], engine, tmp_path / "labels.tif", SegmentOptions(batch=2, confidence=True))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    twins = [_scene(tmp_path / d / "twin.tif", seed=i) for i, d in enumerate("ab")]
    with pytest.raises(OutputError, match="same name"):
        segment_scenes(twins, engine, tmp_path / "out", SegmentOptions(batch=2))
    assert {p: sha256_file(p) for p in before} == before and not (tmp_path / "out").exists()
    assert not (tmp_path / "labels.tif").exists() and not (tmp_path / "scene.qml").exists()


def test_options_that_conflict_are_one_sentence(tmp_path):
    with pytest.raises(UsageError, match="--chunk"):
        SegmentOptions(chunk=256)
    with pytest.raises(UsageError, match="not available with"):
        SegmentOptions(workers=2, confidence=True)
    with pytest.raises(UsageError, match="batch"):
        SegmentOptions(batch=0)
    with pytest.raises(UsageError, match="blend"):
        SegmentOptions(blend="max")


def test_a_cancel_stops_the_scene_and_leaves_nothing_under_its_name(tmp_path, engine):
    scenes = [_scene(tmp_path / f"s{i}.tif", seed=i, shape=(3, 120, 150)) for i in range(2)]
    out = tmp_path / "out"
    heard = []
    hooks = Hooks(progress=heard.append, cancelled=lambda: bool(heard))
    with pytest.raises(Cancelled):
        segment_scenes(scenes, engine, out, SegmentOptions(batch=1), hooks=hooks)
    assert len(heard) == 1 and heard[0].scene == 0 and heard[0].done < heard[0].total
    assert not list(out.iterdir())


def test_the_engines_spec_is_read_once_by_the_workflow(tmp_path, engine, monkeypatch):
    """An observation: the workflow reads the spec once and hands it down (to the sidecars, the auto
    batch's sweep and the engine it loads), with a fixed batch and with --batch auto alike."""
    scene = _scene(tmp_path / "scene.tif")
    loaded = []
    real = ModelSpec.load.__func__

    def counting(cls, path):
        loaded.append(path)
        return real(cls, path)

    monkeypatch.setattr(ModelSpec, "load", classmethod(counting))
    run = segment_scenes(scene, engine, tmp_path / "l.tif", SegmentOptions(batch=2))  # one scene alone
    assert len(loaded) == 1, loaded
    assert len(run.scenes) == 1
    loaded.clear()
    segment_scenes(scene, engine, tmp_path / "auto.tif", SegmentOptions(batch="auto"))  # the sweep too
    assert len(loaded) == 1, loaded


def test_several_scenes_into_a_folder_each_with_its_sidecars(tmp_path, engine):
    scenes = [_scene(tmp_path / f"s{i}.tif", seed=i, shape=(3, 40, 50)) for i in range(2)]
    run = segment_scenes(scenes, engine, tmp_path / "out", SegmentOptions(batch=2))
    assert [d.scene for d in run.scenes] == [0, 1]
    for i in range(2):
        assert (tmp_path / "out" / f"s{i}.labels.tif").is_file()
        assert (tmp_path / "out" / f"s{i}.labels.qml").is_file()


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="the 'cluster' extra")
def test_on_dask_the_same_labels_and_sidecars(tmp_path, engine):
    scene = _scene(tmp_path / "scene.tif", shape=(3, 270, 300))
    one = segment_scenes([scene], engine, tmp_path / "one.tif", SegmentOptions(batch=2))
    chunks = []
    run = segment_scenes([scene], engine, tmp_path / "dask.tif",
                         SegmentOptions(batch=2, workers=1, chunk=256), hooks=Hooks(progress=chunks.append))
    assert run.worker_peaks and len(run.scenes) == 1 and chunks[-1].done == chunks[-1].total
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "dask.tif") as b:
        assert np.array_equal(a.read(), b.read())
    assert (tmp_path / "dask.qml").is_file() and one.scenes[0].result.width == 300
