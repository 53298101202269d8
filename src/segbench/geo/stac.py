"""A STAC Item beside each label raster: where it is, what its values mean, what made it.

``labels.tif`` gets ``labels.stac.json`` (the raster's name with its suffix
replaced, as its QGIS style ``labels.qml``): a STAC 1.1 Item written with
pystac whose geometry and bbox are the raster's footprint in WGS84
(EPSG:4326; null for a raster without a CRS), whose ``datetime`` is when the
scene was segmented, with the projection extension (the raster's CRS, shape
and transform) and one asset per raster, hrefs relative to the item:

- ``labels``: the label COG, with the classification extension's classes
  (value, name, title, colour) and its nodata value as a nodata class;
- ``confidence`` and ``probabilities`` where they were written;
- ``style``: the QGIS style, where there is one;
- ``polygons``: the regions as polygons (``--vector``), where written.

Each raster asset carries ``raster:bands`` (data type, nodata, scale and
offset as the file and its PAM sidecar give them), so that readers such as
odc-stac or stackstac decode the values. The model is named by the
``segbench:architecture`` and ``segbench:engine`` properties and the source
scene by a ``derived_from`` link. The extension schemas cannot be fetched
offline, so extension fields are written through pystac's own classes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

from segbench.errors import RuntimeMissingError
from segbench.extras import require
from segbench.files import write_text
from segbench.geo.style import qml_path
from segbench.raster import is_url, open_raster
from segbench.spec import ModelSpec

SUFFIX = ".stac.json"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOTIFF = "image/tiff; application=geotiff"
#: media types of the polygon files ``--vector`` writes, by suffix
VECTOR_MEDIA_TYPES = {".gpkg": "application/geopackage+sqlite3", ".geojson": "application/geo+json",
                      ".fgb": "application/vnd.flatgeobuf"}
PURPOSE = "the STAC item beside each label raster"
#: points along each side of the footprint, so that it follows curved edges in WGS84
DENSIFY = 4


def item_path(raster: str | os.PathLike[str]) -> Path:
    """The STAC item of ``raster``: ``labels.tif`` -> ``labels.stac.json``."""
    return Path(raster).with_suffix(SUFFIX)


def stac_missing() -> str | None:
    """None when pystac imports; else the one sentence that says how to install it."""
    try:
        require("pystac", PURPOSE)
    except RuntimeMissingError as exc:
        return str(exc)
    return None


def class_name(name: str, value: int) -> str:
    """A class name as the classification extension wants it (letters, digits, ``-``, ``_``)."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or f"class_{value}"


def colour_hint(colour: tuple[int, ...]) -> str:
    """``(0, 128, 255)`` -> ``"0080FF"``: six capital hex digits, no ``#``."""
    return "".join(f"{int(v):02X}" for v in colour[:3])


def write_label_item(
    labels: str | os.PathLike[str],
    spec: ModelSpec,
    *,
    confidence: str | os.PathLike[str] | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    scene: str | os.PathLike[str] | None = None,
    datetime: dt.datetime | None = None,
    polygons: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``<labels stem>.stac.json`` beside the label raster ``labels`` (atomically).

    ``spec`` is the engine's (classes, palette, architecture, build record);
    ``confidence`` and ``probabilities`` are the scene's other rasters, if any;
    ``scene`` the raster segmented; ``datetime`` defaults to now (UTC);
    ``polygons`` the regions' vector file, if one was written.
    """
    pystac = require("pystac", PURPOSE)
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension

    labels = Path(labels)
    dest = item_path(labels)
    when = datetime or dt.datetime.now(dt.UTC)
    with open_raster(labels) as ds:
        crs, transform, shape = ds.crs, ds.transform, (ds.height, ds.width)
        bounds, nodata = ds.bounds, ds.nodata
    geometry, bbox = _footprint(crs, bounds)
    properties: dict[str, Any] = {
        "title": f"{labels.stem}: semantic segmentation",
        "created": _iso(dt.datetime.now(dt.UTC)),
        "segbench:architecture": spec.architecture or None,
        "segbench:engine": spec.build.engine if spec.build and spec.build.engine else None,
    }
    item = pystac.Item(id=labels.stem, geometry=geometry, bbox=bbox, datetime=when,
                       properties={k: v for k, v in properties.items() if v is not None})
    if crs is not None:
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        epsg = crs.to_epsg()
        wkt2 = None if epsg else crs.to_wkt(version="WKT2_2019")
        proj.apply(code=f"EPSG:{epsg}" if epsg else None, wkt2=wkt2, shape=list(shape),
                   transform=list(transform)[:6])

    classes = [Classification.create(value=i, name=class_name(name, i), title=name,
                                     color_hint=colour_hint(colour))
               for i, (name, colour) in enumerate(zip(spec.classes, spec.palette, strict=True))]
    if nodata is not None and not 0 <= int(nodata) < spec.num_classes:
        classes.append(Classification.create(value=int(nodata), name="nodata", title="no data",
                                             nodata=True))
    asset = _add_raster(pystac, item, "labels", labels, dest, "Class labels", ["data"])
    ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=classes)
    if confidence:
        _add_raster(pystac, item, "confidence", confidence, dest,
                    "Confidence: the most likely class's probability", ["data", "confidence"])
    if probabilities:
        _add_raster(pystac, item, "probabilities", probabilities, dest,
                    "Probability of each class, one band per class", ["data", "probabilities"])
    if qml_path(labels).is_file():
        item.add_asset("style", pystac.Asset(href=_relative(qml_path(labels), dest),
                                             media_type="application/xml", title="QGIS style",
                                             roles=["metadata", "style"]))
    if polygons is not None:
        item.add_asset("polygons", pystac.Asset(
            href=_relative(polygons, dest), title="Regions as polygons (class id, class name, area)",
            media_type=VECTOR_MEDIA_TYPES.get(Path(polygons).suffix.lower()), roles=["data"]))
    if scene is not None:
        item.add_link(pystac.Link(rel="derived_from", target=_relative(scene, dest),
                                  media_type=GEOTIFF, title="the scene segmented"))
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    return write_text(dest, json.dumps(data, indent=2) + "\n")


def _add_raster(pystac, item, key: str, raster: str | os.PathLike[str], dest: Path, title: str,
                roles: list[str]):
    """Add asset ``key`` for a COG to ``item`` (written to ``dest``), with ``raster:bands`` read
    from the file (and its PAM sidecar); return the asset."""
    from pystac.extensions.raster import RasterBand, RasterExtension

    with open_raster(raster) as ds:
        nodata = ds.nodata
        if nodata is not None and float(nodata).is_integer():
            nodata = int(nodata)
        bands = [RasterBand.create(nodata=nodata, data_type=dtype,
                                   scale=None if scale == 1 else scale,
                                   offset=None if offset == 0 else offset)
                 for dtype, scale, offset in zip(ds.dtypes, ds.scales, ds.offsets, strict=True)]
        descriptions = ds.descriptions
    asset = pystac.Asset(href=_relative(raster, dest), media_type=COG, title=title, roles=roles)
    if len(bands) > 1 and all(descriptions):
        asset.description = "; ".join(f"band {i}: {d}" for i, d in enumerate(descriptions, start=1))
    item.add_asset(key, asset)
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=bands)
    return asset


def _footprint(crs, bounds) -> tuple[dict | None, list[float] | None]:
    """GeoJSON polygon and bbox in EPSG:4326 of ``bounds`` in ``crs``; (None, None) without a CRS."""
    if crs is None:
        return None, None
    from rasterio.warp import transform_bounds, transform_geom

    left, bottom, right, top = bounds
    n = DENSIFY
    ring = ([(left + (right - left) * i / n, bottom) for i in range(n)]
            + [(right, bottom + (top - bottom) * i / n) for i in range(n)]
            + [(right - (right - left) * i / n, top) for i in range(n)]
            + [(left, top - (top - bottom) * i / n) for i in range(n)])
    ring.append(ring[0])
    geometry = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    bbox = list(transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21))
    return _plain(geometry), bbox


def _plain(value):
    """GeoJSON from rasterio (tuples, its own mapping type) as plain lists and dicts."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _relative(target: str | os.PathLike[str], item: Path) -> str:
    """``target``'s href as seen from ``item``: relative for local files, URLs as they are."""
    if is_url(target):
        return str(target)
    return Path(os.path.relpath(Path(target).absolute(), item.absolute().parent)).as_posix()


def _iso(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")
