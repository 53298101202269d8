"""Accuracy metrics against mmseg's real IoUMetric, and one way to turn label rasters into targets."""

import numpy as np
import pytest

from segbench.bench.metrics import ConfusionMatrix

# (name, mmseg key, segbench per-class key, segbench mean key)
FIGURES = (("IoU", "iou", "miou"), ("Acc", "acc", "macc"), ("Fscore", "f1", "mf1"),
           ("Precision", "precision", "mprecision"), ("Recall", "recall", "mrecall"))


def _mmseg(pairs, num_classes, ignore_index=255) -> dict:
    """mmseg's IoUMetric arithmetic over (prediction, label) pairs, counts summed over all."""
    pytest.importorskip("mmseg")
    import torch
    from mmseg.evaluation.metrics import IoUMetric

    results = [IoUMetric.intersect_and_union(torch.from_numpy(p.astype(np.int64)),
                                             torch.from_numpy(y.astype(np.int64)),
                                             num_classes, ignore_index) for p, y in pairs]
    totals = [sum(r[i] for r in results) for i in range(4)]
    return IoUMetric.total_area_to_metrics(*totals, ["mIoU", "mFscore"], nan_to_num=None, beta=1)


def _ours(pairs, num_classes, ignore_index=255) -> dict:
    cm = ConfusionMatrix(num_classes, ignore_index)
    for p, y in pairs:
        cm.update(p, y)
    return cm.metrics([f"c{i}" for i in range(num_classes)])


def _same(ours: float | None, ref: float) -> bool:
    return ours is None if np.isnan(ref) else ours is not None and ours == pytest.approx(float(ref))


def _assert_equal_to_mmseg(pairs, num_classes):
    ref, ours = _mmseg(pairs, num_classes), _ours(pairs, num_classes)
    for ref_key, key, mean_key in FIGURES:
        values = np.asarray(ref[ref_key], np.float64)
        for i, v in enumerate(values):
            got = ours["per_class"][f"c{i}"][key]
            assert _same(got, v), f"{key} of class {i}: segbench {got}, mmseg {v}"
        want = np.nan if np.isnan(values).all() else np.nanmean(values)
        assert _same(ours[mean_key], want), f"{mean_key}: segbench {ours[mean_key]}, mmseg {want}"
    assert _same(ours["oa"], float(ref["aAcc"])), f"aAcc: segbench {ours['oa']}, mmseg {ref['aAcc']}"


def _a(*rows):
    return np.array(rows, np.int64)


CASES = {
    # classes 1 and 2 are both labelled and predicted, never on the same pixel: F1 = 0/0
    "no true positives": [(_a([0, 0, 2, 2, 1, 1]), _a([0, 0, 1, 1, 2, 2]))],
    # class 2 is predicted but never labelled: IoU 0, Acc and F1 NaN
    "predicted, not labelled": [(_a([0, 2, 1, 1]), _a([0, 0, 1, 1]))],
    # labels 5 and 7 are not classes (and not the ignore index): mmseg keeps their predictions
    "labels beyond the classes": [(_a([0, 1, 2, 0, 1, 1, 0]), _a([0, 1, 2, 5, 5, 7, 255]))],
    # nothing to score: aAcc is 0/0
    "all ignored": [(_a([0, 1, 2]), _a([255, 255, 255]))],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_edge_cases_equal_mmseg_iou_metric(case):
    _assert_equal_to_mmseg(CASES[case], 3)


def test_many_scenes_equal_mmseg_iou_metric():
    rng = np.random.default_rng(11)
    pairs = []
    for _ in range(4):
        label = rng.integers(0, 7, (40, 50))  # 5 classes; 5 and 6 are not classes
        label[rng.random(label.shape) < 0.1] = 255
        pred = np.where(rng.random(label.shape) < 0.6, label % 5, rng.integers(0, 4, label.shape))
        pairs.append((pred, label))
    _assert_equal_to_mmseg(pairs, 5)


def test_all_ignored_scene_has_no_overall_accuracy():
    m = _ours(CASES["all ignored"], 3)
    assert m["oa"] is None and m["miou"] is None and m["kappa"] is None and m["pixels"] == 0


def test_kappa_counts_only_pixels_labelled_with_a_class():
    with_outside = _ours(CASES["labels beyond the classes"], 3)
    inside = _ours([(_a([0, 1, 2]), _a([0, 1, 2]))], 3)
    assert with_outside["kappa"] == inside["kappa"] == pytest.approx(1.0)


def test_label_targets_ignore_nodata_and_invalid_pixels():
    from segbench.raster import label_targets

    label = np.array([[0, 1, 2], [7, 9, 255]], np.uint8)
    valid = np.array([[True, False, True], [True, True, True]])
    targets = label_targets(label, nodata=9, valid=valid, ignore_index=255)
    assert targets.tolist() == [[0, 255, 2], [7, 255, 255]]
    assert label_targets(label).tolist() == label.tolist()  # no nodata, all valid: unchanged
    # mmseg's reduce_zero_label: 1-based labels, 0 ignored
    assert label_targets(label, reduce_zero_label=True).tolist() == [[255, 0, 1], [6, 8, 255]]


def test_one_ignore_index():
    """255 as the ignore/nodata value is written once, in spec.py; everything else names it."""
    import re
    from pathlib import Path

    import segbench

    pattern = re.compile(r"(ignore|nodata|IGNORE|NODATA)\w*\s*(:\s*[\w |]+)?=\s*255\b")
    found = [f"{path.relative_to(Path(segbench.__file__).parent)}: {line.strip()}"
             for path in Path(segbench.__file__).parent.rglob("*.py")
             for line in path.read_text().splitlines() if pattern.search(line)]
    assert found == ["spec.py: IGNORE_INDEX = 255"], found


# -- segbench eval reads labels as the bench does ---------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("mmseg")
    from segbench.train.config import Recipe
    from segbench.train.runner import train
    from segbench.train.synth import SynthOptions, synthesize_dataset

    root = tmp_path_factory.mktemp("data")
    data = synthesize_dataset(root, SynthOptions(train=1, val=1, test=0, size=64, test_size=64))
    checkpoint, spec = train("fcn-hrnet18s", data, root / "run", Recipe(iters=1, batch=1, crop=64),
                             progress=False)
    return data, checkpoint, spec


def test_eval_maps_label_nodata_and_invalid_scene_pixels_to_ignore(trained):
    """A label raster whose nodata is 0, and a scene with a nodata corner: neither is scored."""
    import rasterio

    from segbench.bench.evaluate import evaluate
    from segbench.raster import read_all, write_raster
    from segbench.train.layout import DatasetInfo

    data, checkpoint, spec = trained
    (image, label_path), = DatasetInfo.load(data).pairs("val")
    pixels = read_all(image)
    pixels[:, :10, :12] = 0
    with rasterio.open(image) as ds:
        crs, transform = ds.crs, ds.transform
    write_raster(image, pixels, crs=crs, transform=transform, nodata=0)
    labels = read_all(label_path)
    assert (labels == 0).any() and (labels[0, 10:, 12:] == 0).any()
    write_raster(label_path, labels, crs=crs, transform=transform, nodata=0)
    with rasterio.open(image) as ds:
        valid = ds.dataset_mask() > 0
    scored = valid & (labels[0] != 0) & (labels[0] != 255)
    metrics = evaluate(checkpoint, data, "val")
    assert metrics["per_class"][spec.classes[0]]["Acc"] is None  # class 0 is the label's nodata
    assert metrics["pixels"] == int(scored.sum())
