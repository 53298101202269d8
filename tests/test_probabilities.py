"""--probabilities: a band per class, the softmax of the blended logits, beside the labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segbench.raster import PROBABILITY_SCALE
from segbench.tiler.accumulate import class_probabilities
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

SEGBENCH = Path(sys.executable).with_name("segbench")


def test_class_probabilities_are_the_softmax_of_the_blended_logits():
    rng = np.random.default_rng(0)
    acc = rng.normal(0, 3, (5, 8, 3000)).astype(np.float32)  # wider than one column strip
    wsum = rng.uniform(0.5, 2, (8, 3000)).astype(np.float32)
    valid = rng.random((8, 3000)) > 0.1
    got = class_probabilities(acc, wsum, 6, valid)
    mean = acc[:, :6] / wsum[:6]
    p = np.exp(mean - mean.max(0))
    p /= p.sum(0)
    want = np.where(valid[:6], np.rint(PROBABILITY_SCALE * p), 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)


def test_segment_writes_probabilities_that_agree_with_labels_and_confidence(tmp_path):
    pytest.importorskip("onnxruntime")
    from segbench.engines.registry import build

    spec = make_spec(tile=32, classes=4)
    engine = build(tiny_conv_onnx(tmp_path / "m.onnx", spec), "ort-fp32", tmp_path)
    data = np.random.default_rng(3).integers(1, 256, (3, 150, 170), dtype=np.uint8)
    data[:, :30, :40] = 0  # nodata
    write_scene(tmp_path / "scene.tif", data, nodata=0)
    out = tmp_path / "out"
    done = subprocess.run([str(SEGBENCH), "segment", str(tmp_path / "scene.tif"), "--engine", str(engine),
                           "-o", str(out), "--batch", "2", "--confidence", "--probabilities"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with rasterio.open(out / "scene.labels.tif") as ds:
        labels = ds.read(1)
    with rasterio.open(out / "scene.labels.confidence.tif") as ds:
        confidence = ds.read(1).astype(int)
    with rasterio.open(out / "scene.labels.probabilities.tif") as ds:
        probs = ds.read().astype(int)
        assert ds.count == 4 and ds.nodata == 255
        assert ds.descriptions == tuple(f"probability of {c}" for c in spec.classes)  # from the PAM sidecar
        assert ds.scales == (pytest.approx(1 / PROBABILITY_SCALE),) * 4
    nodata = labels == 255
    assert nodata.any() and (probs[:, nodata] == 255).all() and not (probs[:, ~nodata] == 255).any()
    p = probs[:, ~nodata]
    assert np.abs(p.sum(0) - PROBABILITY_SCALE).max() <= 2  # each rounded by at most half a level
    # the native confidence (max softmax, 0..255) and these (numpy, 0..254) from the same logits
    assert np.abs(p.max(0) / PROBABILITY_SCALE - confidence[~nodata] / 255).max() <= 1 / PROBABILITY_SCALE
    top2 = np.sort(p, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1  # where the winner is clear at this precision
    assert (p.argmax(0)[clear] == labels[~nodata][clear]).all() and clear.mean() > 0.5
