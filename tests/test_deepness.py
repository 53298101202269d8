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
    assert meta["tile_size"] == 64  # the key Deepness's code reads (its documentation says tiles_size)
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


#: the newest onnxruntime Deepness 0.6.5 installs (its requirements: onnxruntime-gpu<=1.17.0)
DEEPNESS_ORT = "onnxruntime==1.17.0"


@pytest.fixture(scope="module")
def deepness_onnxruntime(tmp_path_factory):
    """onnxruntime 1.17.0 (with a numpy 1.x it was built against) in a throw-away folder."""
    import subprocess
    import sys

    target = tmp_path_factory.mktemp("ort117")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:",
                           "--target", str(target), DEEPNESS_ORT, "numpy<2"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"cannot install {DEEPNESS_ORT} here: {done.stderr.strip().splitlines()[-1:]}")
    return target


def test_deepness_own_onnxruntime_loads_the_model_and_gives_our_labels(tmp_path, deepness_onnxruntime):
    """An export's header (IR version 10, opset 18) made loadable by onnxruntime 1.17, which refuses
    IR 10 ('Unsupported model IR version: 10, max supported IR version: 9'); the same labels."""
    import subprocess
    import sys

    spec = make_spec(tile=64, classes=4)
    source = tiny_conv_onnx(tmp_path / "model.onnx", spec)
    exported = onnx.load(str(source))
    exported.ir_version = 10  # what torch.onnx.export(dynamo=True) writes
    onnx.save(exported, str(source))
    path = write_deepness_model(source, spec)
    assert onnx.load(str(path)).ir_version == 9
    raw = np.random.default_rng(1).integers(0, 256, (2, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "assert ort.__version__ == '1.17.0', ort.__version__\n"
        "session = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "meta = session.get_modelmeta().custom_metadata_map\n"
        "assert 'tile_size' in meta and 'tiles_size' in meta\n"
        "x = np.load(sys.argv[2]) / 255.0 / (1 / 255)\n"  # Deepness's preprocessing, mean 0 and std 1/255
        "np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0])\n"
    )
    env = {"PYTHONPATH": str(deepness_onnxruntime), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "raw.npy"),
                           str(tmp_path / "p.npy")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    probabilities = np.load(tmp_path / "p.npy")
    assert float(np.mean(probabilities.argmax(1) == _run(source, raw).argmax(1))) > 0.9999
    # and the export's own IR 10 is what that onnxruntime refuses
    refused = subprocess.run([sys.executable, "-c", "import sys, onnxruntime as ort; "
                              "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])",
                              str(source)], capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode != 0 and "Unsupported model IR version: 10" in refused.stderr
