"""Graph variants (fp16, int8 Q/DQ) are keyed by the ONNX file they were made from."""

import json

import numpy as np
import pytest

from segbench.engines.registry import build
from segbench.export.variants import graph_path, prepare_graph
from segbench.files import sha256_file
from segbench.spec import ModelSpec, sidecar_path
from tests.conftest import make_spec, tiny_conv_onnx

pytest.importorskip("onnxconverter_common", reason="fp16 variants need the 'quant' extra")


def _calib(spec, n=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, spec.num_bands, spec.tile, spec.tile)).astype(np.float32)


def _model(tmp_path, seed=0, digest="ckpt-1"):
    spec = make_spec().replace(checkpoint_digest=digest)
    return tiny_conv_onnx(tmp_path / "model.onnx", spec, seed=seed)


@pytest.mark.parametrize("graph", ["fp16", "int8"])
def test_reexport_with_another_graph_rebuilds_the_variant(tmp_path, graph):
    onnx_path = _model(tmp_path, seed=0)  # same checkpoint digest both times
    calib = _calib(ModelSpec.load(onnx_path))
    variant = prepare_graph(onnx_path, graph, calib)
    first = sha256_file(variant)
    tiny_conv_onnx(onnx_path, ModelSpec.load(onnx_path), seed=1)  # e.g. 'segbench export --labels'
    assert prepare_graph(onnx_path, graph, calib) == variant
    assert sha256_file(variant) != first
    built = ModelSpec.load(variant).build
    assert built.source_digest == sha256_file(onnx_path)
    assert (built.source, built.source_kind) == ("model.onnx", "onnx")


@pytest.mark.parametrize("digest", [None, "ckpt-1"])
def test_an_unchanged_source_reuses_the_variant_and_missing_digests_never_hit(tmp_path, digest):
    onnx_path = _model(tmp_path, digest=digest)
    variant = prepare_graph(onnx_path, "fp16")
    stamp = variant.stat().st_mtime_ns
    assert prepare_graph(onnx_path, "fp16") == variant
    assert variant.stat().st_mtime_ns == stamp  # cached: nothing changed
    # An old variant whose spec names no source digest is never taken as current.
    record = json.loads(sidecar_path(variant).read_text())
    record["build"]["source_digest"] = None
    sidecar_path(variant).write_text(json.dumps(record))
    prepare_graph(onnx_path, "fp16")
    assert variant.stat().st_mtime_ns != stamp
    assert ModelSpec.load(variant).build.source_digest == sha256_file(onnx_path)


def test_new_graph_with_both_checkpoint_digests_missing_is_rebuilt(tmp_path):
    onnx_path = _model(tmp_path, digest=None)
    variant = prepare_graph(onnx_path, "fp16")
    first = sha256_file(variant)
    tiny_conv_onnx(onnx_path, ModelSpec.load(onnx_path), seed=3)
    prepare_graph(onnx_path, "fp16")
    assert sha256_file(variant) != first


def test_int8_is_keyed_by_calibration_set_and_method(tmp_path):
    onnx_path = _model(tmp_path)
    spec = ModelSpec.load(onnx_path)
    variant = prepare_graph(onnx_path, "int8", _calib(spec, seed=1))
    stamp = variant.stat().st_mtime_ns
    assert prepare_graph(onnx_path, "int8", _calib(spec, seed=1)) == variant
    assert variant.stat().st_mtime_ns == stamp
    prepare_graph(onnx_path, "int8", _calib(spec, seed=2))
    assert variant.stat().st_mtime_ns != stamp
    entropy = prepare_graph(onnx_path, "int8", _calib(spec, seed=2), method="entropy")
    assert entropy == graph_path(onnx_path, "int8", "entropy") != variant
    assert ModelSpec.load(entropy).build.options["calibration_method"] == "entropy"


@pytest.mark.parametrize("engine", ["ort-fp16", "ort-int8"])
def test_force_rebuilds_the_variant_too(tmp_path, engine):
    onnx_path = _model(tmp_path)
    calib = _calib(ModelSpec.load(onnx_path))
    build(onnx_path, engine, tmp_path / "engines", calibration=calib)
    variant = graph_path(onnx_path, engine.split("-")[1])
    stamp = variant.stat().st_mtime_ns
    build(onnx_path, engine, tmp_path / "engines", calibration=calib)
    assert variant.stat().st_mtime_ns == stamp
    build(onnx_path, engine, tmp_path / "engines", calibration=calib, force=True)
    assert variant.stat().st_mtime_ns != stamp


def test_engine_records_the_graph_it_was_compiled_from(tmp_path):
    onnx_path = _model(tmp_path)
    artifact = build(onnx_path, "ort-fp16", tmp_path / "engines")
    record = ModelSpec.load(artifact).build
    variant = graph_path(onnx_path, "fp16")
    assert (record.source, record.source_kind) == (variant.name, "onnx")
    assert record.source_digest == sha256_file(variant)


def test_specs_written_before_source_fields_still_load(tmp_path):
    onnx_path = _model(tmp_path)
    data = json.loads(sidecar_path(onnx_path).read_text())
    for key in ("source", "source_kind"):
        data["build"].pop(key, None)
    sidecar_path(onnx_path).write_text(json.dumps(data))
    assert ModelSpec.load(onnx_path).build.source is None


def test_fp16_keeps_layers_whose_activations_overflow_half_precision_in_float32(tmp_path):
    """Outlier channels near 1e6 in conv2's output, inf in half precision (ONNX Runtime's CPU provider
    computes fp16 convolutions in float32, so only a GPU would show it; the types show it here): conv2
    and the nodes that read its output stay float32, the rest is fp16, and the labels still agree."""
    import onnx
    from onnxconverter_common import float16

    from segbench.engines.registry import load
    from segbench.export.probe import abs_max, float_tensors
    from segbench.export.quantize import ort_session
    from tests.conftest import blob_pixels, outlier_conv_onnx

    spec = make_spec(classes=4, tile=32)
    model = outlier_conv_onnx(tmp_path / "model.onnx", spec, scale=30000)
    tiles = np.stack([blob_pixels(32, seed=s) for s in range(6)]).astype(np.float32)
    float_model = onnx.load(str(model))
    assert np.isinf(np.float16(abs_max(float_model, float_tensors(float_model), tiles)["h2"]))

    def output_type(m, node):  # of the tensor the node makes (the converter renames those it casts)
        out = next(n.output[0] for n in m.graph.node if n.name == node)
        return next(v.type.tensor_type.elem_type for v in m.graph.value_info if v.name == out)

    plain = float16.convert_float_to_float16(float_model, keep_io_types=True)
    assert output_type(plain, "conv2") == onnx.TensorProto.FLOAT16  # what the conversion alone would do
    artifact = build(model, "ort-fp16", tmp_path / "engines", calibration=tiles[:4])
    variant = graph_path(model, "fp16")
    record = ModelSpec.load(variant).build.options
    assert {"conv2", "conv3"} <= set(record["float32_nodes"]) and "conv1" not in record["float32_nodes"]
    assert record["overflow_check"]["from"] == "calibration"
    half = onnx.load(str(variant))
    assert output_type(half, "conv2") == onnx.TensorProto.FLOAT
    assert output_type(half, "conv1") == onnx.TensorProto.FLOAT16
    reference = ort_session(model).run(None, {"pixels": tiles})[0].argmax(1)
    with load(artifact) as engine:
        assert np.mean(engine.infer(tiles).argmax(1) == reference) > 0.99
