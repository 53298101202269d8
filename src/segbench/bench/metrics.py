"""Accuracy from one streaming confusion matrix, with mmseg's ``IoUMetric`` arithmetic.

:func:`segbench.raster.label_targets` turns a label raster's values into targets (label
nodata, invalid scene pixels and the ignore index all become the ignore
index); training evaluation, the bench and the study score with it and with
:class:`ConfusionMatrix`, so all of them read labels the same way.

The figures equal mmseg 1.2.2's ``IoUMetric.total_area_to_metrics`` (metrics
``mIoU`` and ``mFscore``): counts are summed over every pixel of every scene
before any ratio is taken; a ratio of 0/0 is NaN (written as None) and left
out of the class means; F1 is NaN for a class with no true positive. Pixels
labelled with a value that is neither a class nor the ignore index are not
in any class's label count, but their predictions count, as in mmseg's
``intersect_and_union``. Kappa is segbench's own, over the pixels labelled
with a class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segbench.spec import IGNORE_INDEX


class ConfusionMatrix:
    """``counts[label, pred]`` over every pixel seen so far.

    Row ``num_classes`` counts the predictions on pixels labelled outside the
    classes (neither a class nor the ignore index).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes + 1, num_classes), np.int64)

    def update(self, pred: np.ndarray, targets: np.ndarray) -> None:
        """Add one chunk of predictions and targets (same shape, from ``raster.label_targets``)."""
        if pred.shape != targets.shape:
            raise ValueError(f"prediction {pred.shape} and targets {targets.shape} differ in shape")
        c = self.num_classes
        keep = targets != self.ignore_index
        y = targets[keep].astype(np.int64)
        y[(y < 0) | (y >= c)] = c
        p = pred[keep].astype(np.int64)
        if p.size and (p.min() < 0 or p.max() >= c):
            raise ValueError(f"predictions outside 0..{c - 1}")
        self.counts += np.bincount(y * c + p, minlength=(c + 1) * c).reshape(c + 1, c)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.counts += other.counts
        return self

    def metrics(self, class_names: Sequence[str], exclude: Sequence[str] = ()) -> dict:
        return metrics_from_counts(self.counts, class_names, exclude)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def _kappa(inside: np.ndarray) -> float:
    """Cohen's kappa of a square confusion matrix; NaN when undefined."""
    total = inside.sum()
    if not total:
        return np.nan
    po = np.trace(inside) / total
    pe = (inside.sum(1) * inside.sum(0)).sum() / (total * total)
    return (po - pe) / (1 - pe) if pe != 1 else np.nan


def metrics_from_counts(counts: np.ndarray, class_names: Sequence[str],
                        exclude: Sequence[str] = ()) -> dict:
    """mIoU, mAcc, mean F1, precision and recall, overall accuracy (aAcc), kappa, per-class figures.

    ``counts`` is a :class:`ConfusionMatrix`'s (a square matrix without the
    outside-the-classes row is accepted too). ``exclude`` names classes left
    out of the class means (the ISPRS convention leaves out clutter); overall
    accuracy always counts every class. NaN is written as None.
    """
    counts = np.asarray(counts, dtype=np.float64)
    c = counts.shape[1]
    inside = counts[:c]
    tp = np.diag(inside)
    label_area = inside.sum(1)
    pred_area = counts.sum(0)
    iou = _ratio(tp, label_area + pred_area - tp)
    recall = _ratio(tp, label_area)
    precision = _ratio(tp, pred_area)
    f1 = _ratio(2 * precision * recall, precision + recall)
    oa = _ratio(tp.sum(), label_area.sum())
    keep = np.array([name not in exclude for name in class_names])

    def mean(x: np.ndarray) -> float | None:
        x = x[keep]
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else None

    def clean(x) -> float | None:
        return None if np.isnan(x) else float(x)

    return {
        "miou": mean(iou),
        "macc": mean(recall),
        "mf1": mean(f1),
        "mprecision": mean(precision),
        "mrecall": mean(recall),
        "oa": clean(oa),
        "kappa": clean(_kappa(inside)),
        "pixels": int(label_area.sum()),
        "excluded_classes": list(exclude),
        "per_class": {
            name: {"iou": clean(iou[i]), "acc": clean(recall[i]), "precision": clean(precision[i]),
                   "recall": clean(recall[i]), "f1": clean(f1[i]), "pixels": int(label_area[i])}
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


def miou_score(class_names: Sequence[str], ignore_index: int = IGNORE_INDEX, exclude: Sequence[str] = ()):
    """``score(pred, targets) -> mIoU`` over one set of tiles, as the bench scores scenes (classes in
    ``exclude`` left out of the mean); what an int8 search checks its target with
    (:mod:`segbench.export.qualify`)."""

    def score(pred: np.ndarray, targets: np.ndarray) -> float | None:
        cm = ConfusionMatrix(len(class_names), ignore_index)
        cm.update(pred, targets)
        return cm.metrics(class_names, exclude)["miou"]

    return score
