"""GIS outputs beside the label raster: QGIS styles, attribute tables, STAC items, polygons, areas of
interest."""

from segbench.geo.stac import write_label_item
from segbench.geo.style import style_confidence, style_labels, style_polygons, style_probabilities

__all__ = ["style_confidence", "style_labels", "style_polygons", "style_probabilities", "write_label_item"]
