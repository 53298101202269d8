"""What a command (``build``, ``bench``, a study's bench cell) hands the int8 search: calibration
tiles, held-out tiles from scenes calibration never saw (windows of the one scene when there is one;
with labels where the calibration scenes have them), the target, and the bench's per-class IoU."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from segbench.bench.metrics import ConfusionMatrix
from segbench.export.calibration import calibration_set
from segbench.export.qualify import DEFAULT_INT8_METHOD, Int8Options, Int8Target
from segbench.spec import ModelSpec

#: held-out tiles the int8 target is checked on
HELD_OUT_TILES = 16


def class_iou(class_names: Sequence[str], ignore_index: int, exclude: Sequence[str] = ()):
    """``iou(pred, truth)``: the IoU of each class counted in the bench's mIoU (``exclude`` left out;
    NaN where undefined), from the bench's own confusion matrix."""
    keep = [i for i, name in enumerate(class_names) if name not in exclude]

    def iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
        cm = ConfusionMatrix(len(class_names), ignore_index)
        cm.update(pred, truth)
        per_class = cm.metrics(class_names, exclude)["per_class"]
        values = [per_class[class_names[i]]["iou"] for i in keep]
        return np.array([np.nan if v is None else v for v in values], float)

    return iou


def int8_setup(spec: ModelSpec, scenes: Sequence[str | os.PathLike[str]],
               labels: Sequence[str | os.PathLike[str]] = (), tiles: int = 32, target: float | None = 0.99,
               explain: bool = False, exclude: Sequence[str] = (),
               method: str = DEFAULT_INT8_METHOD) -> tuple[np.ndarray, Int8Options]:
    """The calibration tiles of ``scenes`` and the int8 options for them; ``target`` None builds plain
    int8 (no search); ``exclude``: classes left out of the mIoU (the ISPRS convention's clutter);
    ``method``: how openvino-int8's graph is found (:data:`~segbench.export.qualify.INT8_METHODS`)."""
    held = HELD_OUT_TILES if target is not None or explain else 0
    drawn = calibration_set(scenes, spec, tiles, held_out=held, labels=list(labels) or None)
    counted = tuple(name for name in spec.classes if name not in exclude)
    iou = class_iou(spec.classes, spec.ignore_index, exclude)
    options = Int8Options(target=Int8Target(target) if target is not None else None,
                          held_out=drawn.held_out, class_iou=iou, classes=counted, explain=explain,
                          method=method)
    return drawn.tiles, options
