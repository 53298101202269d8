"""Label and confidence rasters that explain themselves in QGIS and GDAL.

A GeoTIFF's colour table always has 256 entries, and QGIS lists every one
of them (0..255, unnamed) in a paletted layer's legend. So beside each label
raster go:

- ``<name>.qml``, the QGIS style QGIS loads with the layer: a paletted
  renderer with one entry per class, named and coloured (nodata stays
  transparent);
- ``<name>.tif.aux.xml``, GDAL's PAM sidecar, where GeoTIFF keeps category
  names and a thematic raster attribute table (value, class, red, green,
  blue): what ``gdalinfo`` and GDAL-based tools read, and what QGIS 3.30 and
  later reads as the layer's attribute table.

A confidence raster (uint8, 0..255 for probability 0..1) gets a grey ramp
style and, in its PAM sidecar, the scale and offset to [0, 1]. A polygon
file gets a style that colours its regions by class, as the label raster.
Neither GDAL's Python bindings nor rasterio write attribute tables, so the
sidecars are written here with ElementTree, as GDAL and QGIS document them;
each atomically.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

from segbench.errors import OutputError
from segbench.files import write_text
from segbench.raster import CONFIDENCE_SCALE

# GDAL's enums, as numbers in its PAM XML (gdal.h: GDALRATFieldType, GDALRATFieldUsage)
_INTEGER, _STRING = 0, 2
_MIN_MAX, _NAME, _RED, _GREEN, _BLUE = 5, 2, 6, 7, 8
QGIS_VERSION = "3.22.0"
_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"


def qml_path(raster: str | os.PathLike[str]) -> Path:
    """The style QGIS loads with ``raster``: the same name, ending ``.qml``."""
    return Path(raster).with_suffix(".qml")


def aux_path(raster: str | os.PathLike[str]) -> Path:
    """GDAL's PAM sidecar of ``raster``."""
    return Path(f"{raster}.aux.xml")


def style_labels(raster: str | os.PathLike[str], classes: Sequence[str],
                 palette: Sequence[Sequence[int]]) -> list[Path]:
    """Write the QGIS style and the PAM sidecar (category names, attribute table) of a label raster."""
    colours = [tuple(int(v) for v in c[:3]) for c in palette]
    renderer = _raster_renderer(type="paletted", band="1", opacity="1", alphaBand="-1", nodataColor="")
    entries = ET.SubElement(renderer, "colorPalette")
    for i, (name, c) in enumerate(zip(classes, colours, strict=True)):
        ET.SubElement(entries, "paletteEntry", value=str(i), color=_hex(c), alpha="255", label=name)
    ET.SubElement(renderer, "colorramp", type="randomcolors", name="[source]")
    qml = _qml_raster(renderer)
    band = _pam_band()
    names = ET.SubElement(band, "CategoryNames")
    for name in classes:
        ET.SubElement(names, "Category").text = name
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for i, (name, kind, usage) in enumerate([("Value", _INTEGER, _MIN_MAX), ("Class", _STRING, _NAME),
                                             ("Red", _INTEGER, _RED), ("Green", _INTEGER, _GREEN),
                                             ("Blue", _INTEGER, _BLUE)]):
        field = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for i, (name, c) in enumerate(zip(classes, colours, strict=True)):
        row = ET.SubElement(rat, "Row", index=str(i))
        for value in (i, name, *c):
            ET.SubElement(row, "F").text = str(value)
    return [write_text(qml_path(raster), qml), _write_pam(raster, band)]


def style_polygons(vector: str | os.PathLike[str], classes: Sequence[str],
                   palette: Sequence[Sequence[int]]) -> Path:
    """Write the QGIS style of a polygon file: categories by class name, in the classes' colours
    (a GeoPackage keeps it in its ``layer_styles`` table, other formats in ``<name>.qml``)."""
    root = _qgis()
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr="class_name",
                             symbollevels="0", enableorderby="0", forceraster="0")
    categories, symbols = ET.SubElement(renderer, "categories"), ET.SubElement(renderer, "symbols")
    for i, (name, colour) in enumerate(zip(classes, palette, strict=True)):
        ET.SubElement(categories, "category", value=name, label=name, symbol=str(i), render="true")
        rgba = ",".join(str(int(v)) for v in colour[:3]) + ",255"
        props = {"color": rgba, "outline_color": "35,35,35,255", "outline_style": "solid",
                 "outline_width": "0.1", "outline_width_unit": "MM", "style": "solid"}
        symbol = ET.SubElement(symbols, "symbol", type="fill", name=str(i), alpha="1", clip_to_extent="1",
                               force_rhr="0")
        layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "pass": "0",
                                                "locked": "0"})
        options = ET.SubElement(layer, "Option", type="Map")
        for k, v in props.items():
            ET.SubElement(options, "Option", name=k, value=v, type="QString")
        for k, v in props.items():  # the pre-3.26 form, which QGIS 3.22 reads
            ET.SubElement(layer, "prop", k=k, v=v)
    qml = _document(root)
    if Path(vector).suffix.lower() == ".gpkg":
        return write_gpkg_style(vector, qml)
    return write_text(qml_path(vector), qml)


def write_gpkg_style(gpkg: str | os.PathLike[str], qml: str, name: str = "segbench") -> Path:
    """Store ``qml`` as the default style of the GeoPackage's one feature layer, in its own
    ``layer_styles`` table, where QGIS looks first (and writes styles itself): no ``.qml`` beside
    it that another output's style could share. The table is registered in ``gpkg_contents`` as
    attributes, as QGIS does, and written in one transaction."""
    import sqlite3

    gpkg = Path(gpkg)
    try:
        with contextlib.closing(sqlite3.connect(gpkg)) as db, db:
            layer, geometry = db.execute(
                "SELECT table_name, column_name FROM gpkg_geometry_columns LIMIT 1").fetchone()
            db.execute(_LAYER_STYLES)
            db.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
            db.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                       "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                       "owner, ui) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', '')",
                       (layer, geometry, name, qml, "classes coloured as the label raster (segbench)"))
            db.execute("INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
                       "description, last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', "
                       "'', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
    except (sqlite3.Error, TypeError) as exc:
        raise OutputError(f"Could not store the polygons' style in {gpkg}: {exc}.") from exc
    return gpkg


#: QGIS's own layout of a GeoPackage's style table (QgsOgrProvider / GDAL's GPKG driver)
_LAYER_STYLES = """CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
    f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT,
    styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"""


def style_confidence(raster: str | os.PathLike[str]) -> list[Path]:
    """Write a grey-ramp QGIS style and the scale/offset to [0, 1] of a uint8 confidence raster."""
    band = _pam_band()
    ET.SubElement(band, "Description").text = "confidence (max class probability)"
    ET.SubElement(band, "Offset").text = "0"
    ET.SubElement(band, "Scale").text = repr(1 / CONFIDENCE_SCALE)
    return [write_text(qml_path(raster), _grey_qml()), _write_pam(raster, band)]


def style_probabilities(raster: str | os.PathLike[str], classes: Sequence[str], scale: int) -> list[Path]:
    """Write a grey-ramp QGIS style (the first class) and, per band, its class name and the
    scale to [0, 1] of a uint8 probability raster (``round(scale * p)``)."""
    root = ET.Element("PAMDataset")
    for i, name in enumerate(classes, start=1):
        band = ET.SubElement(root, "PAMRasterBand", band=str(i))
        ET.SubElement(band, "Description").text = f"probability of {name}"
        ET.SubElement(band, "Offset").text = "0"
        ET.SubElement(band, "Scale").text = repr(1 / scale)
    ET.indent(root)
    pam = write_text(aux_path(raster), ET.tostring(root, encoding="unicode") + "\n")
    return [write_text(qml_path(raster), _grey_qml()), pam]


def _grey_qml() -> str:
    """A QGIS grey ramp over band 1, 0 (black) to 1 (white) in the band's scaled values."""
    renderer = _raster_renderer(type="singlebandgray", grayBand="1", gradient="BlackToWhite", opacity="1",
                                alphaBand="-1", nodataColor="")
    contrast = ET.SubElement(renderer, "contrastEnhancement")
    for tag, text in (("minValue", "0"), ("maxValue", "1"), ("algorithm", "StretchToMinimumMaximum")):
        ET.SubElement(contrast, tag).text = text
    return _qml_raster(renderer)


def _qgis() -> ET.Element:
    return ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")


def _raster_renderer(**attributes: str) -> ET.Element:
    """A QGIS raster renderer element with the parts every segbench raster style has."""
    renderer = ET.Element("rasterrenderer", attributes)
    ET.SubElement(renderer, "rasterTransparency")
    origin = ET.SubElement(renderer, "minMaxOrigin")
    ET.SubElement(origin, "limits").text = "None"
    ET.SubElement(origin, "extent").text = "WholeRaster"
    return renderer


def _qml_raster(renderer: ET.Element) -> str:
    """A QGIS style document of one raster renderer."""
    root = _qgis()
    ET.SubElement(root, "pipe").append(renderer)
    ET.SubElement(root, "blendMode").text = "0"
    return _document(root)


def _document(root: ET.Element) -> str:
    """A QML document: QGIS's doctype, then the element tree, indented."""
    ET.indent(root)
    return f"{_DOCTYPE}\n{ET.tostring(root, encoding='unicode')}\n"


def _pam_band() -> ET.Element:
    return ET.Element("PAMRasterBand", band="1")


def _write_pam(raster: str | os.PathLike[str], band: ET.Element) -> Path:
    root = ET.Element("PAMDataset")
    root.append(band)
    ET.indent(root)
    return write_text(aux_path(raster), ET.tostring(root, encoding="unicode") + "\n")


def _hex(colour: tuple[int, ...]) -> str:
    return "#" + "".join(f"{v:02x}" for v in colour)
