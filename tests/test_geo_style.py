"""Label and confidence rasters styled for GIS: QGIS .qml, GDAL category names and attribute table."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import rasterio

from segbench.geo.style import aux_path, qml_path
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

SEGBENCH = Path(sys.executable).with_name("segbench")
QGIS_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """A scene segmented by the CLI with a confidence raster; the spec of its engine."""
    pytest.importorskip("onnxruntime")
    from segbench.engines.registry import build

    root = tmp_path_factory.mktemp("styled")
    spec = make_spec(tile=32, classes=4)
    spec = dataclasses.replace(spec, classes=("building", "road & path", "tree", "<water>"))
    engine = build(tiny_conv_onnx(root / "m.onnx", spec), "ort-fp32", root)
    data = np.random.default_rng(2).integers(1, 256, (3, 120, 150), dtype=np.uint8)
    scene = write_scene(root / "scene.tif", data)
    out = root / "labels.tif"
    args = [str(scene), "--engine", str(engine), "-o", str(out), "--confidence", "--batch", "2"]
    if importlib.util.find_spec("pyogrio"):
        args += ["--vector", str(root / "regions.gpkg")]
    done = subprocess.run([str(SEGBENCH), "segment", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, root / "labels.confidence.tif", spec


def test_the_qml_lists_exactly_the_classes_named_and_coloured(segmented):
    labels, _, spec = segmented
    renderer = ET.parse(qml_path(labels)).find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == list(spec.classes)
    assert [int(e.get("value")) for e in entries] == list(range(len(spec.classes)))
    assert [e.get("color") for e in entries] == ["#" + bytes(c).hex() for c in spec.palette]


def test_gdal_reads_the_category_names_and_attribute_table(segmented):
    labels, _, spec = segmented
    band = ET.parse(aux_path(labels)).getroot().find("PAMRasterBand")
    assert [c.text for c in band.findall("CategoryNames/Category")] == list(spec.classes)
    rat = band.find("GDALRasterAttributeTable")
    assert rat.get("tableType") == "thematic"
    fields = [f.find("Name").text for f in rat.findall("FieldDefn")]
    assert fields == ["Value", "Class", "Red", "Green", "Blue"]
    rows = [[f.text for f in row.findall("F")] for row in rat.findall("Row")]
    assert rows == [[str(i), name, *map(str, c)]
                    for i, (name, c) in enumerate(zip(spec.classes, spec.palette, strict=True))]
    with rasterio.open(labels) as ds:  # GDAL opens the raster with its sidecar; the colours are in the file
        assert ds.colormap(1)[2][:3] == tuple(spec.palette[2])
        assert json.loads(ds.tags()["classes"]) == list(spec.classes)


def test_confidence_is_scaled_to_probabilities(segmented):
    _, confidence, _ = segmented
    with rasterio.open(confidence) as ds:  # the scale comes from the PAM sidecar, read by GDAL
        assert ds.scales == (pytest.approx(1 / 255),) and ds.offsets == (0.0,)
        assert ds.read(1).max() <= 255
    renderer = ET.parse(qml_path(confidence)).find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandgray"


def _has_qgis() -> bool:
    if not QGIS_PYTHON.exists():
        return False
    return subprocess.run([str(QGIS_PYTHON), "-c", "import qgis.core"], capture_output=True).returncode == 0


def _in_qgis(classes: list[str], body: str):
    """Run ``body`` (which prints one JSON line last) in Debian's Python with a headless QGIS
    application and ``classes`` of qgis.core imported; its process and what it printed."""
    preamble = ("import json, os\nos.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
                f"from qgis.core import QgsApplication, {', '.join(classes)}\n"
                "app = QgsApplication([], False)\napp.initQgis()\n")
    done = subprocess.run([str(QGIS_PYTHON), "-c", preamble + textwrap.dedent(body)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done, json.loads(done.stdout.strip().splitlines()[-1])


def test_qgis_shows_a_legend_of_the_class_names(segmented):
    if not _has_qgis():
        pytest.skip("QGIS is not installed (apt-get install python3-qgis)")
    labels, _, spec = segmented
    done, shown = _in_qgis(["QgsRasterLayer"], f"""
        layer = QgsRasterLayer({str(labels)!r}, "labels")
        assert layer.isValid()
        layer.loadDefaultStyle()  # what QGIS does when a layer is added: the .qml beside it
        legend = [label for label, _ in layer.legendSymbologyItems()]
        print(json.dumps([layer.renderer().type(), legend]))
    """)
    kind, legend = shown
    assert kind == "paletted" and legend == list(spec.classes)


def test_qgis_colours_the_polygons_by_class(segmented):
    if not _has_qgis():
        pytest.skip("QGIS is not installed (apt-get install python3-qgis)")
    labels, _, spec = segmented
    regions = labels.with_name("regions.gpkg")
    if not regions.exists():
        pytest.skip("the 'gis' extra is not installed")
    done, shown = _in_qgis(["QgsVectorLayer"], f"""
        layer = QgsVectorLayer({str(regions)!r}, "regions", "ogr")
        assert layer.isValid()
        layer.loadDefaultStyle()
        renderer = layer.renderer()
        colours = [c.symbol().color().name() for c in renderer.categories()]
        print(json.dumps([renderer.type(), [c.label() for c in renderer.categories()], colours,
                          layer.featureCount()]))
    """)
    assert "partially supported" not in done.stderr  # a GeoPackage version QGIS 3.22 reads fully
    kind, labels_shown, colours, count = shown
    assert kind == "categorizedSymbol" and labels_shown == list(spec.classes) and count > 0
    assert colours == ["#" + bytes(c).hex() for c in spec.palette]


@pytest.fixture(scope="module")
def same_name(tmp_path_factory):
    """``-o regions.tif --vector regions.gpkg``: the natural naming, where both styles were once
    written to regions.qml."""
    pytest.importorskip("pyogrio")
    from segbench.engines.registry import build

    root = tmp_path_factory.mktemp("same-name")
    spec = dataclasses.replace(make_spec(tile=32, classes=3), classes=("building", "road", "tree"))
    engine = build(tiny_conv_onnx(root / "m.onnx", spec), "ort-fp32", root)
    scene = write_scene(root / "scene.tif", np.random.default_rng(3).integers(1, 256, (3, 90, 110),
                                                                             dtype=np.uint8))
    labels, regions = root / "regions.tif", root / "regions.gpkg"
    done = subprocess.run([str(SEGBENCH), "segment", str(scene), "--engine", str(engine), "-o", str(labels),
                           "--vector", str(regions), "--batch", "2"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return labels, regions, spec


def test_a_raster_and_its_polygons_of_one_name_keep_their_own_styles(same_name):
    import sqlite3

    import pyogrio

    labels, regions, spec = same_name
    assert ET.parse(qml_path(labels)).find("pipe/rasterrenderer").get("type") == "paletted"
    with sqlite3.connect(regions) as db:
        (layer,), = db.execute("SELECT table_name FROM gpkg_geometry_columns").fetchall()
        styles = db.execute("SELECT f_table_name, useAsDefault, styleQML FROM layer_styles").fetchall()
        listed = db.execute("SELECT data_type FROM gpkg_contents "
                            "WHERE table_name = 'layer_styles'").fetchall()
    assert len(styles) == 1 and styles[0][:2] == (layer, 1) and listed == [("attributes",)]
    renderer = ET.fromstring(styles[0][2]).find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol"
    assert [c.get("label") for c in renderer.find("categories")] == list(spec.classes)
    assert pyogrio.read_info(regions, layer=layer)["features"] > 0  # still a GeoPackage GDAL reads


def test_qgis_opens_a_raster_and_its_polygons_of_one_name_each_with_its_style(same_name):
    if not _has_qgis():
        pytest.skip("QGIS is not installed (apt-get install python3-qgis)")
    labels, regions, spec = same_name
    done, shown = _in_qgis(["QgsRasterLayer", "QgsVectorLayer"], f"""
        raster = QgsRasterLayer({str(labels)!r}, "labels")
        vector = QgsVectorLayer({str(regions)!r}, "regions", "ogr")
        assert raster.isValid() and vector.isValid()
        raster.loadDefaultStyle()
        vector.loadDefaultStyle()
        legend = [label for label, _ in raster.legendSymbologyItems()]
        categories = [c.label() for c in vector.renderer().categories()]
        print(json.dumps([raster.renderer().type(), legend, vector.renderer().type(), categories]))
    """)
    raster_kind, legend, vector_kind, categories = shown
    assert raster_kind == "paletted" and legend == list(spec.classes)  # not 256 numbered entries
    assert vector_kind == "categorizedSymbol" and categories == list(spec.classes)
