"""Evaluate a checkpoint on a dataset split with mmseg's own inference and IoUMetric."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segbench.errors import InputError
from segbench.raster import read_all
from segbench.train.layout import DatasetInfo


def evaluate(checkpoint: str | Path, data: str | Path, split: str = "val") -> dict:
    """mIoU, mAcc, aAcc and per-class IoU/Acc of ``checkpoint`` on ``split``.

    Whole scenes go through mmseg's ``slide`` inference at the model's tile
    size (stride three quarters of a tile) and its ``IoUMetric`` arithmetic.
    """
    import torch
    from mmengine.config import ConfigDict
    from mmseg.evaluation.metrics import IoUMetric

    from segbench.checkpoint import load_model

    info = DatasetInfo.load(data)
    pairs = info.pairs(split)
    if not pairs:
        raise InputError(f"The {split} split of {data} is empty; nothing to evaluate.")
    model, spec = load_model(checkpoint)
    if spec.num_bands != len(info.bands):
        raise InputError(f"The model reads {spec.num_bands} bands but {data} has {len(info.bands)}.")
    stride = max(spec.tile * 3 // 4, 1)
    model.test_cfg = ConfigDict(mode="slide", crop_size=(spec.tile, spec.tile), stride=(stride, stride))
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    results = []
    for image, label in pairs:
        x = (torch.from_numpy(read_all(image, spec.bands).astype(np.float32))[None] - mean) / std
        meta = dict(img_shape=x.shape[2:], ori_shape=x.shape[2:], pad_shape=x.shape[2:])
        with torch.inference_mode():
            pred = model.inference(x, [meta]).argmax(1)[0]
        gt = torch.from_numpy(read_all(label)[0].astype(np.int64))
        results.append(IoUMetric.intersect_and_union(pred, gt, spec.num_classes, spec.ignore_index))
    totals = [sum(r[i] for r in results) for i in range(4)]
    metrics = IoUMetric.total_area_to_metrics(*totals, ["mIoU"], nan_to_num=None, beta=1)
    iou, acc = np.asarray(metrics["IoU"]), np.asarray(metrics["Acc"])
    return {
        "scenes": len(pairs),
        "aAcc": float(metrics["aAcc"]),
        "mIoU": float(np.nanmean(iou)),
        "mAcc": float(np.nanmean(acc)),
        "per_class": {name: {"IoU": None if np.isnan(i) else float(i),
                             "Acc": None if np.isnan(a) else float(a)}
                      for name, i, a in zip(spec.classes, iou, acc, strict=True)},
    }
