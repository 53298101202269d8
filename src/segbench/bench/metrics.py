"""Accuracy from one streaming confusion matrix, with mmseg's ``IoUMetric`` conventions.

Pixels whose label is the ignore index (or is not a class), or that are
marked invalid (nodata), are excluded. Counts are summed over every pixel of
every scene before any ratio is taken. A class absent from both the labels
and the predictions has a 0/0 IoU: NaN, skipped by the means, exactly as
mmseg does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ConfusionMatrix:
    """``counts[label, pred]`` over every pixel seen so far."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, label: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add one chunk of predictions and labels (same shape)."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
        c = self.num_classes
        label = label.astype(np.int64, copy=False)
        keep = (label != self.ignore_index) & (label >= 0) & (label < c)
        if valid is not None:
            keep &= valid
        p = pred[keep].astype(np.int64)
        if p.size and (p.min() < 0 or p.max() >= c):
            raise ValueError(f"predictions outside 0..{c - 1}")
        self.counts += np.bincount(label[keep] * c + p, minlength=c * c).reshape(c, c)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.counts += other.counts
        return self

    def metrics(self, class_names: Sequence[str], exclude: Sequence[str] = ()) -> dict:
        return metrics_from_counts(self.counts, class_names, exclude)


def metrics_from_counts(counts: np.ndarray, class_names: Sequence[str],
                        exclude: Sequence[str] = ()) -> dict:
    """mIoU, mAcc, mean F1, overall accuracy, kappa and per-class figures.

    ``exclude`` names classes left out of the class means (the ISPRS
    convention leaves out clutter); overall accuracy always counts every class.
    NaN (a class absent from labels and predictions) is written as None.
    """
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diag(counts)
    label_area = counts.sum(1)
    pred_area = counts.sum(0)
    total = counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (label_area + pred_area - tp)
        acc = tp / label_area
        precision = tp / pred_area
        f1 = 2 * tp / (label_area + pred_area)
        oa = tp.sum() / total if total else np.nan
        pe = (label_area * pred_area).sum() / (total * total) if total else np.nan
        kappa = (oa - pe) / (1 - pe) if total and pe != 1 else np.nan
    keep = np.array([name not in exclude for name in class_names])

    def mean(x: np.ndarray) -> float | None:
        x = x[keep]
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else None

    def clean(x) -> float | None:
        return None if x is None or np.isnan(x) else float(x)

    return {
        "miou": mean(iou),
        "macc": mean(acc),
        "mf1": mean(f1),
        "oa": clean(oa),
        "kappa": clean(kappa),
        "pixels": int(total),
        "excluded_classes": list(exclude),
        "per_class": {
            name: {"iou": clean(iou[i]), "acc": clean(acc[i]), "precision": clean(precision[i]),
                   "f1": clean(f1[i]), "pixels": int(label_area[i])}
            for i, name in enumerate(class_names)
        },
    }


class AgreementCounter:
    """Fraction of pixels on which two engines' label maps agree."""

    def __init__(self) -> None:
        self.same = 0
        self.total = 0

    def update(self, a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> None:
        keep = np.ones(a.shape, bool) if valid is None else valid
        self.same += int(np.count_nonzero((a == b) & keep))
        self.total += int(np.count_nonzero(keep))

    @property
    def value(self) -> float | None:
        return self.same / self.total if self.total else None
