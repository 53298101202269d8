"""Outputs never replace inputs: the same file, a link to it or a sidecar of it is refused before any
work, and inputs stay byte for byte as they were. Also what the scene's pixels say: NaN is no-data, and
bands the model does not read are named."""

import os
import warnings

import numpy as np
import pytest
import rasterio

from segbench.cli import main
from segbench.engines.registry import build, load
from segbench.errors import InputError, OutputError
from segbench.files import sha256_file
from segbench.protect import Inputs, refuse_shared
from segbench.raster import LABEL_NODATA, UnreadBandsWarning, scene_info
from segbench.tiler import segment
from tests.conftest import make_spec, tiny_conv_onnx, write_scene


@pytest.fixture
def engine(tmp_path, tiny_onnx):
    return build(tiny_onnx, "ort-fp32", tmp_path / "engines")


@pytest.fixture
def imagery(tmp_path):
    rng = np.random.default_rng(3)
    return write_scene(tmp_path / "scene.tif", rng.integers(0, 255, (3, 60, 70), dtype=np.uint8))


def _digests(folder):
    return {p: sha256_file(p) for p in folder.rglob("*") if p.is_file()}


def _refused(capsys, code, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("segbench: error: "), err
    assert all(w in err[0] for w in words), err[0]


def _segment(engine, scene, out, *extra):
    return main(["segment", str(scene), "--engine", str(engine), "-o", str(out), "--batch", "2", *extra])


@pytest.mark.parametrize("how", ["same path", "symbolic link", "hard link", "another spelling"])
def test_labels_onto_the_scene_are_refused_and_the_scene_kept(tmp_path, engine, imagery, capsys, how):
    before = sha256_file(imagery)
    out = {"same path": imagery, "another spelling": tmp_path / "." / "engines" / ".." / "scene.tif",
           "symbolic link": tmp_path / "link.tif", "hard link": tmp_path / "hard.tif"}[how]
    if how == "symbolic link":
        out.symlink_to(imagery)
    elif how == "hard link":
        os.link(imagery, out)
    _refused(capsys, _segment(engine, imagery, out), "would replace the input", "scene.tif")
    assert sha256_file(imagery) == before


def test_every_kind_of_output_is_checked(tmp_path, engine, imagery, capsys):
    """Confidence, probabilities, polygons, QGIS styles and the AOI: each refused onto an input."""
    style = imagery.with_suffix(".qml")  # the user's own QGIS style of the scene: a sidecar of it
    style.write_text("<qgis/>")
    aoi = tmp_path / "fields.geojson"
    aoi.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
                   '"geometry": {"type": "Polygon", "coordinates": [[[500000, 5799980], [500030, 5799980], '
                   '[500030, 5799999], [500000, 5799999], [500000, 5799980]]]}}]}')
    before = _digests(tmp_path)
    # the labels' QGIS style would be scene.qml, the scene's own style
    _refused(capsys, _segment(engine, imagery, tmp_path / "scene.tiff"), "scene.qml", "scene.tif")
    # polygons onto the area of interest they were asked inside of
    pytest.importorskip("pyogrio")
    _refused(capsys, _segment(engine, imagery, tmp_path / "l.tif", "--aoi", str(aoi), "--vector", str(aoi)),
             "fields.geojson")
    # the confidence raster onto the scene (scene.confidence.tif is where -o scene.tif puts it)
    os.link(imagery, tmp_path / "x.confidence.tif")
    _refused(capsys, _segment(engine, imagery, tmp_path / "x.tif", "--confidence"), "x.confidence.tif")
    assert _digests(tmp_path) == {**before, tmp_path / "x.confidence.tif": sha256_file(imagery)}
    assert not (tmp_path / "l.tif").exists() and not (tmp_path / "x.tif").exists()


def test_a_scene_in_the_output_folder_is_not_replaced_by_its_labels(tmp_path, engine, capsys):
    """Scenes named like labels, segmented into the folder that holds them: refused, kept."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for name in ("a", "a.labels"):
        write_scene(folder / f"{name}.tif", rng.integers(0, 255, (3, 40, 40), dtype=np.uint8))
    before = _digests(folder)
    _refused(capsys, _segment(engine, folder, folder), "a.labels.tif")
    assert _digests(folder) == before


def test_two_outputs_sharing_a_file_are_refused(tmp_path, engine, capsys):
    """Two scenes of one name into one folder, or polygons whose style is the raster's."""
    rng = np.random.default_rng(5)
    scenes = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        pixels = rng.integers(0, 255, (3, 40, 40), dtype=np.uint8)
        scenes.append(write_scene(tmp_path / sub / "s.tif", pixels))
    code = main(["segment", *map(str, scenes), "--engine", str(engine), "-o", str(tmp_path / "out"),
                 "--batch", "2"])
    _refused(capsys, code, "s.labels.tif", "separate output folders")
    pytest.importorskip("pyogrio")
    polygons = tmp_path / "regions.geojson"
    code = _segment(engine, scenes[0], tmp_path / "regions.tif", "--vector", str(polygons))
    _refused(capsys, code, "regions.qml")
    assert not list(tmp_path.glob("regions*"))


def test_bench_and_study_folders_never_hold_what_they_would_overwrite(tmp_path, tiny_onnx, imagery):
    from segbench.bench.run import BenchConfig, run_bench

    bench = tmp_path / "bench"
    (bench / "ort-fp32").mkdir(parents=True)
    labels = write_scene(bench / "ort-fp32" / "scene.labels.tif", np.zeros((1, 60, 70), np.uint8))
    before = sha256_file(labels)
    with pytest.raises(OutputError, match="overlaps the input"):
        run_bench(BenchConfig.flat(model=tiny_onnx, engines=["ort-fp32"], reference="ort-fp32",
                              scenes=[imagery], labels=[labels], out=bench, batch=2, quick=True))
    assert sha256_file(labels) == before
    with pytest.raises(OutputError, match="would replace the input"):
        run_bench(BenchConfig.flat(model=tiny_onnx, engines=["ort-fp32"], reference="ort-fp32",
                              scenes=[imagery], out=imagery, batch=2, quick=True))

    from segbench.study.run import run_study
    from segbench.study.studyfile import parse_study

    data = tmp_path / "data"
    data.mkdir()
    study = parse_study({"study": {"name": "s", "out": str(data / "study")},
                         "datasets": [{"name": "d", "path": str(data)}],
                         "networks": ["segformer-b0"], "engines": ["ort-fp32"]}, tmp_path)
    with pytest.raises(OutputError, match="overlaps the input"):
        run_study(study)
    assert not (data / "study").exists()


def test_inputs_compare_by_identity(tmp_path):
    a = tmp_path / "a.tif"
    a.write_bytes(b"x")
    inputs = Inputs().add(a)
    inputs.refuse([tmp_path / "b.tif", tmp_path / "missing" / "c.tif", None])  # nothing there: fine
    (tmp_path / "b.tif").write_bytes(b"x")  # same content, another file: fine
    inputs.refuse([tmp_path / "b.tif"])
    with pytest.raises(OutputError, match="would replace the input"):
        inputs.refuse([a])
    refuse_shared([(a, [a, tmp_path / "a.qml"]), (tmp_path / "b.gpkg", [tmp_path / "b.gpkg"])])
    with pytest.raises(OutputError, match="both write"):
        refuse_shared([(a, [a, tmp_path / "a.qml"]), (tmp_path / "a.gpkg", [tmp_path / "a.qml"])])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_of_a_float_scene_are_nodata(tmp_path, bad):
    """NaN and +-inf pixels are nodata (issue 35: +-inf used to reach the engine, which was then
    blamed for the non-finite logits)."""
    spec = make_spec(tile=32)
    onnx = tiny_conv_onnx(tmp_path / "m.onnx", spec.replace(input_dtype="float32"))
    engine = load(build(onnx, "ort-fp32", tmp_path / "engines"))
    data = np.random.default_rng(6).uniform(0, 255, (3, 50, 60)).astype(np.float32)
    data[:, 10:20, 5:25] = bad  # every band
    data[1, 30:35, 40:50] = bad  # one band: the pixel cannot be classified either
    scene = write_scene(tmp_path / "f.tif", data)  # no nodata value declared
    try:
        segment(scene, engine, tmp_path / "l.tif", batch=2)
    finally:
        engine.close()
    with rasterio.open(tmp_path / "l.tif") as ds:
        labels = ds.read(1)
    nodata = ~np.isfinite(data).all(axis=0)
    assert (labels[nodata] == LABEL_NODATA).all()
    assert (labels[~nodata] < spec.num_classes).all()


def test_bands_the_model_does_not_read_are_named_once(tmp_path, engine, capsys):
    scene = write_scene(tmp_path / "rgbn.tif", np.random.default_rng(7).integers(0, 255, (4, 40, 40),
                                                                                 dtype=np.uint8))
    assert _segment(engine, scene, tmp_path / "l.tif") == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "band" in line]
    assert len(err) == 1 and err[0].startswith("segbench: warning: rgbn.tif has 4 bands"), err
    assert "reads band(s) 1, 2, 3" in err[0] and "not 4" in err[0] and "gdalbuildvrt" in err[0]
    three = write_scene(tmp_path / "rgb.tif", np.zeros((3, 40, 40), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreadBandsWarning)
        assert _segment(engine, three, tmp_path / "l3.tif") == 0


def test_a_batch_larger_than_the_scene_is_cut_and_one_too_large_for_memory_refused(tmp_path, engine, capsys):
    """Issue 35: --batch 100000 allocated 73 GiB and ended in a numpy traceback."""
    import dataclasses
    import re

    import psutil

    from segbench.tiler.pipeline import batch_bytes, bounded_batch

    scene = write_scene(tmp_path / "s.tif", np.random.default_rng(8).integers(0, 255, (3, 40, 40), np.uint8))
    assert _segment(engine, scene, tmp_path / "l.tif", "--batch", "100000") == 0
    assert re.search(r"batch (\d+), not 100000: the largest scene has \1 windows", capsys.readouterr().err)
    with rasterio.open(scene) as ds:
        big = dataclasses.replace(scene_info(ds), height=40_000, width=40_000)
    spec = make_spec(tile=512, classes=6)
    said = (r"A batch of \d+ tiles needs [\d.]+ GiB for ort-fp32's input and output buffers, more than the "
            r"[\d.]+ GiB available; give --batch \d+ or less")
    with pytest.raises(InputError, match=said) as info:
        bounded_batch(100_000, big, spec, 384, "ort-fp32")
    fits = int(re.search(r"--batch (\d+)", str(info.value)).group(1))
    available = psutil.virtual_memory().available
    assert batch_bytes(fits, spec) <= available * 1.1 < batch_bytes(2 * fits + 2, spec)


@pytest.mark.parametrize("where", ["the output", "a folder above it"])
def test_a_file_where_the_output_folder_would_be_is_one_sentence(tmp_path, engine, imagery, capsys, where):
    """Issue 35: an output naming an existing file that is not a GeoTIFF (here the engine itself, whose
    name does not end in .tif, so the labels go into a folder of that name) ended in a traceback."""
    out = engine if where == "the output" else engine / "labels"
    before = sha256_file(engine)
    assert _segment(engine, imagery, out) == 1
    err = capsys.readouterr().err
    assert f"{engine} is a file" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sha256_file(engine) == before
