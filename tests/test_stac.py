"""STAC metadata: an Item beside each label raster, an MLM Item beside each exported model.

Items are validated offline: the core Item schema with the JSON schemas pystac
ships (a registry that cannot fetch), the extension fields by reading them
back through pystac's and stac-model's own classes (their schemas cannot be
fetched here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from segbench.files import sha256_file
from segbench.geo.style import style_confidence, style_labels, style_probabilities
from segbench.raster import LABEL_NODATA, write_raster
from segbench.spec import ModelSpec
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

pystac = pytest.importorskip("pystac", reason="the 'stac' extra is not installed")
pytest.importorskip("stac_model", reason="the 'stac' extra is not installed")

from pystac.extensions.classification import ClassificationExtension  # noqa: E402
from pystac.extensions.projection import ProjectionExtension  # noqa: E402
from pystac.extensions.raster import RasterExtension  # noqa: E402

from segbench.export.mlm import mlm_path, model_properties, write_model_item  # noqa: E402
from segbench.geo.stac import item_path, write_label_item  # noqa: E402

CLASSES = ("building", "road & path", "tree", "<water>")
SEGBENCH = Path(sys.executable).with_name("segbench")


def _spec(**changes) -> ModelSpec:
    return make_spec(classes=len(CLASSES)).replace(classes=CLASSES, **changes)


def core_errors(data: dict) -> list[str]:
    """Errors of ``data`` against the STAC core Item schema, from pystac's bundled schemas only."""
    from jsonschema import Draft7Validator
    from pystac.validation.local_validator import VERSION, get_local_schema_cache
    from referencing import Registry, Resource

    cache = get_local_schema_cache()
    registry = Registry().with_resources((uri, Resource.from_contents(s)) for uri, s in cache.items())
    schema = cache[f"https://schemas.stacspec.org/v{VERSION}/item-spec/json-schema/item.json"]
    assert data["stac_version"] == VERSION
    return [e.message for e in Draft7Validator(schema, registry=registry).iter_errors(data)]


UTM32N = CRS.from_epsg(32632)


def _label_raster(path: Path, crs=UTM32N, height=60, width=80) -> Path:
    labels = np.random.default_rng(3).integers(0, len(CLASSES), (height, width), dtype=np.uint8)
    labels[:4] = LABEL_NODATA
    return write_raster(path, labels, crs=crs, transform=from_origin(480_000, 5_300_000, 0.5, 0.5),
                        nodata=LABEL_NODATA)


@pytest.fixture
def labelled(tmp_path):
    """A label raster in UTM 32N with a confidence and a probability raster, styled; its item."""
    spec = _spec()
    labels = _label_raster(tmp_path / "labels.tif")
    style_labels(labels, spec.classes, spec.palette)
    confidence = write_raster(tmp_path / "labels.confidence.tif", np.full((60, 80), 200, np.uint8),
                              crs=UTM32N, transform=from_origin(480_000, 5_300_000, 0.5, 0.5))
    style_confidence(confidence)
    probabilities = write_raster(tmp_path / "labels.probabilities.tif",
                                 np.full((len(CLASSES), 60, 80), 60, np.uint8), crs=UTM32N,
                                 transform=from_origin(480_000, 5_300_000, 0.5, 0.5), nodata=255)
    style_probabilities(probabilities, spec.classes, 254)
    item = write_label_item(labels, spec, confidence=confidence, probabilities=probabilities,
                            scene=tmp_path / "scene.tif")
    return spec, labels, confidence, probabilities, item


def test_the_label_item_is_a_valid_stac_item_beside_the_raster(labelled):
    _, labels, confidence, probabilities, path = labelled
    assert path == labels.with_name("labels.stac.json") == item_path(labels)
    data = json.loads(path.read_text())
    assert core_errors(data) == []
    item = pystac.Item.from_file(str(path))
    assert item.id == "labels" and item.datetime is not None
    for key, raster in [("labels", labels), ("confidence", confidence), ("probabilities", probabilities)]:
        asset = item.assets[key]
        assert not os.path.isabs(asset.href)
        assert Path(asset.get_absolute_href()) == raster.resolve()
        assert asset.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
        assert "data" in asset.roles
    assert Path(item.assets["style"].get_absolute_href()) == labels.with_suffix(".qml").resolve()
    (scene,) = item.get_links("derived_from")
    assert scene.href == "scene.tif"
    assert item.properties["segbench:architecture"] == "tiny-conv"


def test_the_classes_read_back_through_the_classification_extension(labelled):
    spec, *_, path = labelled
    item = pystac.Item.from_file(str(path))
    assert ClassificationExtension.has_extension(item)
    classes = ClassificationExtension.ext(item.assets["labels"]).classes
    named = [c for c in classes if not c.nodata]
    assert [c.value for c in named] == list(range(len(CLASSES)))
    assert [c.title for c in named] == list(CLASSES)
    assert [c.color_hint for c in named] == [bytes(c).hex().upper() for c in spec.palette]
    assert all(re.fullmatch(r"[0-9A-Za-z_-]+", c.name) for c in classes)
    assert [c.name for c in named] == ["building", "road_path", "tree", "water"]
    (nodata,) = [c for c in classes if c.nodata]
    assert nodata.value == LABEL_NODATA


def test_the_raster_bands_give_nodata_and_the_scales(labelled):
    *_, path = labelled
    item = pystac.Item.from_file(str(path))

    def bands(key):
        return RasterExtension.ext(item.assets[key]).bands

    (label_band,) = bands("labels")
    assert label_band.nodata == LABEL_NODATA and label_band.data_type == "uint8"
    (confidence_band,) = bands("confidence")
    assert confidence_band.scale == pytest.approx(1 / 255)
    assert [b.scale for b in bands("probabilities")] == [pytest.approx(1 / 254)] * len(CLASSES)


def test_the_footprint_is_the_raster_in_wgs84(labelled):
    _, labels, *_, path = labelled
    item = pystac.Item.from_file(str(path))
    with rasterio.open(labels) as ds:
        want = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
        shape, transform = [ds.height, ds.width], list(ds.transform)[:6]
    assert item.bbox == pytest.approx(list(want), abs=1e-12)
    ring = np.array(item.geometry["coordinates"][0])
    assert item.geometry["type"] == "Polygon" and (ring[0] == ring[-1]).all()
    assert ring.min(0) == pytest.approx(want[:2], abs=1e-7)
    assert ring.max(0) == pytest.approx(want[2:], abs=1e-7)
    assert 8.7 < ring[:, 0].min() < 8.8 and 47.8 < ring[:, 1].min() < 47.9  # UTM 32N, south Germany
    proj = ProjectionExtension.ext(item)
    assert proj.code == "EPSG:32632" and proj.shape == shape and proj.transform == transform


def test_a_raster_without_a_crs_gets_a_null_geometry(tmp_path):
    labels = _label_raster(tmp_path / "plain.tif", crs=None)
    data = json.loads(write_label_item(labels, _spec()).read_text())
    assert data["geometry"] is None and "bbox" not in data
    assert core_errors(data) == []


def test_the_mlm_item_describes_the_model(tmp_path):
    from stac_model.schema import MLModelProperties

    onnx = tiny_conv_onnx(tmp_path / "model.onnx", _spec())
    path = write_model_item(onnx, ModelSpec.load(onnx))
    assert path == tmp_path / "model.mlm.json" == mlm_path(onnx)
    data = json.loads(path.read_text())
    assert core_errors(data) == []
    assert data["geometry"] is None
    props = MLModelProperties.model_validate(data["properties"])
    assert props.name == "model" and props.architecture == "tiny-conv"
    assert set(props.tasks) == {"semantic-segmentation"} and props.framework == "ONNX"
    (model_in,) = props.input
    assert model_in.name == "pixels" and list(model_in.bands) == ["band1", "band2", "band3"]
    assert model_in.input.shape == [-1, 3, 32, 32] and model_in.input.data_type == "float32"
    assert model_in.value_scaling is None  # the graph standardises: raw pixels in
    (model_out,) = props.output
    assert model_out.name == "logits" and model_out.result.shape == [-1, len(CLASSES), 32, 32]
    assert [c.value for c in model_out.classes] == list(range(len(CLASSES)))
    assert [c.description for c in model_out.classes] == list(CLASSES)
    assert [c.color_hint for c in model_out.classes] == [bytes(c).hex().upper() for c in _spec().palette]

    item = pystac.Item.from_file(str(path))
    model = item.assets["model"]
    assert "mlm:model" in model.roles and not os.path.isabs(model.href)
    assert Path(model.get_absolute_href()) == onnx.resolve()
    assert model.extra_fields["file:checksum"] == "1220" + sha256_file(onnx)
    assert Path(item.assets["spec"].get_absolute_href()) == Path(f"{onnx}.spec.json").resolve()


def test_a_labels_graph_outputs_uint8_labels(tmp_path):
    onnx = tiny_conv_onnx(tmp_path / "model.onnx", _spec())
    props = model_properties(onnx, _spec(output="labels"))
    assert props.output[0].result.shape == [-1, 32, 32] and props.output[0].result.data_type == "uint8"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from segbench.engines.registry import build

    root = tmp_path_factory.mktemp("stac-engine")
    return build(tiny_conv_onnx(root / "m.onnx", make_spec(tile=32)), "ort-fp32", root)


def test_segment_writes_a_valid_item_beside_each_label_raster(engine, tmp_path):
    from segbench.cli import main

    scene = write_scene(tmp_path / "scene.tif",
                        np.random.default_rng(4).integers(1, 256, (3, 70, 90), dtype=np.uint8))
    out = tmp_path / "labels.tif"
    args = ["segment", str(scene), "--engine", str(engine), "-o", str(out), "--confidence", "--batch", "2"]
    if importlib.util.find_spec("pyogrio") is not None:  # the gis extra: polygons too, listed in the item
        args += ["--vector", str(tmp_path / "regions.geojson")]
    assert main(args) == 0
    data = json.loads((tmp_path / "labels.stac.json").read_text())
    assert core_errors(data) == []
    item = pystac.Item.from_file(str(tmp_path / "labels.stac.json"))
    assert Path(item.assets["labels"].get_absolute_href()) == out.resolve()
    confidence = item.assets["confidence"].get_absolute_href()
    assert Path(confidence) == (tmp_path / "labels.confidence.tif").resolve()
    assert item.properties["segbench:engine"] == "ort-fp32"
    assert Path(item.get_single_link("derived_from").get_absolute_href()) == scene.resolve()
    names = [c.title for c in ClassificationExtension.ext(item.assets["labels"]).classes if not c.nodata]
    assert names == list(make_spec().classes)
    if "--vector" in args:
        polygons = item.assets["polygons"]
        assert Path(polygons.get_absolute_href()) == (tmp_path / "regions.geojson").resolve()
        assert polygons.media_type == "application/geo+json"


def test_without_pystac_segment_says_so_once_and_writes_the_rest(engine, tmp_path):
    if not SEGBENCH.is_file():
        pytest.skip(f"{SEGBENCH} is not installed (run 'make install')")
    shadow = tmp_path / "shadow" / "pystac"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ModuleNotFoundError("no pystac", name="pystac")\n')
    path = os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    scenes = [write_scene(tmp_path / f"s{i}.tif",
                          np.random.default_rng(i).integers(1, 256, (3, 40, 50), dtype=np.uint8))
              for i in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([str(SEGBENCH), "segment", *map(str, scenes), "--engine", str(engine),
                           "-o", str(out), "--batch", "2"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("segbench: skipping STAC items: ") and "pip install 'segbench[stac]'" in line
    labels = sorted(out.glob("*.tif"))
    assert len(labels) == 2 and not list(out.glob("*.stac.json"))


@pytest.mark.mmseg
def test_export_writes_the_mlm_item_beside_the_graph(tmp_path, capsys):
    pytest.importorskip("mmseg", reason="needs the train extra: pip install 'segbench[train]'")
    from stac_model.schema import MLModelProperties

    from segbench.cli import main
    from segbench.train.models import untrained_checkpoint

    checkpoint, _ = untrained_checkpoint("segformer-b0", tmp_path / "model.pth", classes=3, tile=64)
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "model.onnx")]) == 0
    path = tmp_path / "model.mlm.json"
    assert f"STAC MLM item: {path}" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert core_errors(data) == []
    props = MLModelProperties.model_validate(data["properties"])
    assert props.architecture == "segformer-b0" and props.total_parameters > 1_000_000
    assert props.input[0].input.shape == [-1, 3, 64, 64] and props.output[0].result.shape == [-1, 3, 64, 64]
    item = pystac.Item.from_file(str(path))
    assert Path(item.assets["model"].get_absolute_href()) == (tmp_path / "model.onnx").resolve()
