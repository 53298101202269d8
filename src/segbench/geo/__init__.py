"""GIS outputs beside the label raster: QGIS styles and raster attribute tables."""

from segbench.geo.style import style_confidence, style_labels

__all__ = ["style_confidence", "style_labels"]
