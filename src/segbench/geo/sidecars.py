"""Everything that goes beside a segmented scene's rasters, planned and written in one place.

For each label raster: its QGIS style and GDAL attribute table, the same for
its confidence and probability rasters, its polygons where asked (with their
style) and a STAC item listing them all. ``segment`` (in one process or on
Dask) and the bench call :meth:`Sidecars.write`; a command plans
:meth:`Sidecars.outputs` before any work, so that it can refuse an output that
would replace an input or another output (:mod:`segbench.protect`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segbench.geo.stac import item_path, stac_missing, write_label_item
from segbench.geo.style import (
    aux_path,
    qml_path,
    style_confidence,
    style_labels,
    style_polygons,
    style_probabilities,
)
from segbench.raster import PROBABILITY_SCALE
from segbench.spec import ModelSpec


@dataclass(frozen=True)
class Polygons:
    """``--vector``: one polygon per region, to ``dest`` for one scene; with several scenes, a file of
    ``dest``'s format beside each label raster (``x.labels.tif`` -> ``x.polygons.gpkg``)."""

    dest: Path
    min_area: float = 0.0
    simplify: float = 0.0

    def path_for(self, labels: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
        """The polygons of ``labels`` when the command's ``-o`` was ``out``."""
        labels = Path(labels)
        if labels == Path(out):
            return Path(self.dest)
        stem = labels.stem.removesuffix(".labels")
        return labels.with_name(f"{stem}.polygons{Path(self.dest).suffix}")


@dataclass(frozen=True)
class Sidecars:
    """What a command writes beside each scene's rasters: ``stac`` items where pystac imports,
    ``polygons`` where asked."""

    spec: ModelSpec
    polygons: Polygons | None = None
    stac: bool = True

    @classmethod
    def where_possible(cls, spec: ModelSpec, polygons: Polygons | None = None) -> Sidecars:
        """STAC items only where the 'stac' extra is installed (:func:`stac_missing` says why not)."""
        return cls(spec, polygons, stac=stac_missing() is None)

    def outputs(self, labels: str | os.PathLike[str], confidence=None, probabilities=None,
                out: str | os.PathLike[str] | None = None) -> dict[Path, list[Path]]:
        """Each output of a scene (its rasters, its polygons) with every file it is written as, its own
        and those :meth:`write` puts beside it (``out``: the command's ``-o``)."""
        files: dict[Path, list[Path]] = {}
        for raster in filter(None, (labels, confidence, probabilities)):
            files[Path(raster)] = [Path(raster), qml_path(raster), aux_path(raster)]
        if self.stac:
            files[Path(labels)].append(item_path(labels))
        if self.polygons is not None:
            vector = self.polygons.path_for(labels, out if out is not None else labels)
            files[vector] = [vector, *([] if vector.suffix.lower() == ".gpkg" else [qml_path(vector)])]
        return files

    def write(self, labels: str | os.PathLike[str], *, confidence=None, probabilities=None,
              scene: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None) -> str:
        """Write them; returns what the polygons took, for the scene's line ('' without polygons)."""
        style_labels(labels, self.spec.classes, self.spec.palette)
        if confidence:
            style_confidence(confidence)
        if probabilities:
            style_probabilities(probabilities, self.spec.classes, PROBABILITY_SCALE)
        note, vector = "", None
        if self.polygons is not None:
            from segbench.geo.vector import polygonize

            vector = self.polygons.path_for(labels, out if out is not None else labels)
            done = polygonize(labels, vector, self.spec.classes, min_area=self.polygons.min_area,
                              simplify=self.polygons.simplify)
            style_polygons(vector, self.spec.classes, self.spec.palette)
            note = f"{done.polygons} polygons in {vector} ({done.seconds:.1f} s)"
        if self.stac:  # last: the item reads the scales the styles give, and lists the polygons
            write_label_item(labels, self.spec, confidence=confidence, probabilities=probabilities,
                             scene=scene, polygons=vector)
        return note
