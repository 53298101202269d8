"""Evaluate a checkpoint on a dataset split: mmseg's slide inference, scored as the bench scores.

Labels become targets with :func:`segbench.raster.label_targets` (label
nodata and the scene's invalid pixels ignored) and are counted in one
:class:`~segbench.bench.metrics.ConfusionMatrix`, whose figures are mmseg's
``IoUMetric``'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segbench.bench.metrics import ConfusionMatrix
from segbench.errors import InputError
from segbench.raster import label_targets, open_raster, read_window
from segbench.train.layout import DatasetInfo


def evaluate(checkpoint: str | Path, data: str | Path, split: str = "val") -> dict:
    """mIoU, mAcc, mFscore, aAcc and per-class IoU/Acc/Fscore/Precision/Recall on ``split``.

    Whole scenes go through mmseg's ``slide`` inference at the model's tile
    size (stride: the spec's, else three quarters of a tile).
    """
    from mmengine.config import ConfigDict

    from segbench.checkpoint import load_model

    info = DatasetInfo.load(data)
    pairs = info.pairs(split)
    if not pairs:
        raise InputError(f"The {split} split of {data} is empty; nothing to evaluate.")
    model, spec = load_model(checkpoint)
    if spec.num_bands != len(info.bands):
        raise InputError(f"The model reads {spec.num_bands} bands but {data} has {len(info.bands)}.")
    stride = spec.stride or max(spec.tile * 3 // 4, 1)
    model.test_cfg = ConfigDict(mode="slide", crop_size=(spec.tile, spec.tile), stride=(stride, stride))
    cm = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    for image, label in pairs:
        pixels, valid = _read_scene(image, spec.bands)
        with open_raster(label) as lab:
            targets = label_targets(lab.read(1), lab.nodata, valid, spec.ignore_index,
                                    spec.reduce_zero_label)
        cm.update(_slide_predict(model, pixels, spec), targets)
    m = cm.metrics(spec.classes)
    return {
        "scenes": len(pairs),
        "aAcc": m["oa"], "mIoU": m["miou"], "mAcc": m["macc"], "mFscore": m["mf1"],
        "mPrecision": m["mprecision"], "mRecall": m["mrecall"], "kappa": m["kappa"],
        "pixels": m["pixels"],
        "per_class": {name: {"IoU": v["iou"], "Acc": v["acc"], "Fscore": v["f1"],
                             "Precision": v["precision"], "Recall": v["recall"]}
                      for name, v in m["per_class"].items()},
        "confusion": cm.counts.tolist(),
    }


def _read_scene(path: Path, bands) -> tuple[np.ndarray, np.ndarray]:
    """The whole scene as float32 ``(bands, H, W)`` and its valid-pixel mask, read as the tiler reads."""
    with open_raster(path) as ds:
        return read_window(ds, 0, 0, ds.height, ds.width, bands)


def _slide_predict(model, pixels: np.ndarray, spec) -> np.ndarray:
    """mmseg's slide inference on normalized pixels: ``(H, W)`` class indexes."""
    import torch

    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    x = (torch.from_numpy(pixels)[None] - mean) / std
    meta = dict(img_shape=x.shape[2:], ori_shape=x.shape[2:], pad_shape=x.shape[2:])
    with torch.inference_mode():
        return model.inference(x, [meta]).argmax(1)[0].numpy()
