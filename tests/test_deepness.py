"""The Deepness copy of an exported model: its metadata, and what the plugin's preprocessing gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segbench.errors import ExportError
from segbench.export.deepness import deepness_path, write_deepness_model
from segbench.spec import ModelSpec
from tests.conftest import make_spec, tiny_conv_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_deepness_reads_its_settings_and_gets_our_labels(tmp_path):
    spec = make_spec(tile=64, classes=4).replace(stride=48, gsd_m=0.3)
    source = tiny_conv_onnx(tmp_path / "model.onnx", spec)
    path = write_deepness_model(source, ModelSpec.load(source).replace(stride=48, gsd_m=0.3))
    assert path == deepness_path(source) == tmp_path / "model.deepness.onnx"
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {str(i): name for i, name in enumerate(spec.classes)}
    assert (meta["tiles_size"], meta["tiles_overlap"], meta["resolution"]) == (64, 25, 30.0)
    # Deepness's preprocessing (tiles / 255, then (x - mean) / std) hands the graph raw pixels
    raw = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64)).astype(np.float32)
    fed = ((raw / 255.0) - np.array(meta["standardization_mean"], np.float32)[:, None, None]) \
        / np.array(meta["standardization_std"], np.float32)[:, None, None]
    np.testing.assert_allclose(fed, raw, atol=1e-3)
    probabilities = _run(path, fed.astype(np.float32))
    logits = _run(source, raw)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert float(np.mean(probabilities.argmax(1) == logits.argmax(1))) > 0.9999


def test_a_labels_graph_has_no_probabilities_for_deepness(tmp_path):
    spec = make_spec(tile=32)
    source = tiny_conv_onnx(tmp_path / "model.onnx", spec)
    with pytest.raises(ExportError, match="export with logits"):
        write_deepness_model(source, spec.replace(output="labels"))
    assert not deepness_path(source).exists()
