"""GeoTIFF scenes as an mmseg dataset: two loading transforms registered with mmseg.

The dataset itself is mmseg's ``BaseSegDataset`` over ``<split>/images/*.tif``
and ``<split>/labels/*.tif``; these transforms read those files with rasterio
(any band count, uint8/uint16/float32) instead of OpenCV, keep the bands in
the spec's order, and map label nodata to the ignore index.
"""

from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from segbench.raster import label_targets, open_raster
from segbench.spec import IGNORE_INDEX


@TRANSFORMS.register_module()
class LoadGeoTiffImage(BaseTransform):
    """Read ``results['img_path']`` as an ``(H, W, bands)`` float32 image."""

    def __init__(self, bands: list[int] | None = None) -> None:
        self.bands = list(bands) if bands else None

    def transform(self, results: dict) -> dict:
        with open_raster(results["img_path"]) as ds:
            img = ds.read(self.bands)
        img = np.ascontiguousarray(img.transpose(1, 2, 0)).astype(np.float32)
        results["img"] = img
        results["img_shape"] = img.shape[:2]
        results["ori_shape"] = img.shape[:2]
        return results


@TRANSFORMS.register_module()
class LoadGeoTiffLabel(BaseTransform):
    """Read ``results['seg_map_path']`` as ``gt_seg_map`` (uint8), nodata -> ignore index."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        with open_raster(results["seg_map_path"]) as ds:
            label = ds.read(1)
            nodata = ds.nodata
        results["gt_seg_map"] = label_targets(label, nodata, ignore_index=self.ignore_index).astype(np.uint8)
        results.setdefault("seg_fields", []).append("gt_seg_map")
        return results
