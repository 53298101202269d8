"""An area of interest from a vector file: the polygons of a GeoPackage, GeoJSON or any OGR format."""

from __future__ import annotations

import os
from pathlib import Path

from segbench.errors import InputError, first_line
from segbench.extras import require
from segbench.raster import AreaOfInterest


def read_aoi(path: str | os.PathLike[str]) -> AreaOfInterest:
    """The union of the polygons in ``path`` (first layer) with the file's CRS."""
    require("shapely", "--aoi (the 'gis' extra)")
    require("pyogrio", "--aoi (the 'gis' extra)")
    import shapely
    from pyogrio.raw import read
    from rasterio.crs import CRS

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Area of interest {path} does not exist.")
    try:
        meta, _, geometry, _ = read(path, read_geometry=True)
    except Exception as exc:  # pyogrio's errors for files OGR cannot read
        raise InputError(f"Area of interest {path} is not a readable vector file "
                         f"({first_line(exc)}).") from exc
    shapes = [g for g in shapely.from_wkb(geometry) if g is not None and g.area > 0]
    if not shapes:
        raise InputError(f"Area of interest {path} holds no polygons.")
    crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else None
    return AreaOfInterest(shapely.geometry.mapping(shapely.union_all(shapes)), crs,
                          name=f"Area of interest {path.name}")
