"""Engines built from a small real ONNX graph, run by the real runtimes."""

import dataclasses

import numpy as np
import pytest

from segbench.engines.registry import KINDS, availability, build, get_kind, load
from segbench.errors import EngineError, InputError, SpecError
from segbench.spec import ModelSpec


def _tiles(spec, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, spec.num_bands, spec.tile, spec.tile)).astype(np.float32)


def _reference(onnx_path, tiles):
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return s.run(None, {"pixels": tiles})[0]


@pytest.mark.parametrize("name, min_agree", [
    ("ort-fp32", 1.0), ("ort-fp16", 0.995), ("ort-int8", 0.97),
    ("openvino-fp32", 0.999), ("openvino-int8", 0.97),
])
def test_cpu_engines_build_load_and_agree(tmp_path, tiny_onnx, name, min_agree):
    if (reason := availability(name)) is not None:
        pytest.skip(reason)
    spec = ModelSpec.load(tiny_onnx)
    calib = _tiles(spec, 16, seed=1)
    artifact = build(tiny_onnx, name, tmp_path / "engines", calibration=calib)
    built = ModelSpec.load(artifact)
    assert built.build.engine == name and built.build.precision == get_kind(name).precision
    assert built.build.artifact_bytes > 0 and built.build.build_seconds >= 0
    if get_kind(name).precision == "int8":
        assert built.build.calibration_digest and built.build.options["bias"] == "float"
    engine = load(artifact)
    tiles = _tiles(spec)
    out = engine.infer(tiles)
    engine.close()
    ref = _reference(tiny_onnx, tiles)
    assert out.shape == ref.shape and out.dtype == np.float32
    agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
    assert agree >= min_agree, f"{name} agrees on {agree:.4%}"


def test_build_is_cached_by_source_digest(tmp_path, tiny_onnx):
    first = build(tiny_onnx, "ort-fp32", tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build(tiny_onnx, "ort-fp32", tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    build(tiny_onnx, "ort-fp32", tmp_path, force=True)
    assert first.stat().st_mtime_ns != stamp


def test_int8_without_calibration_is_refused(tmp_path, tiny_onnx):
    with pytest.raises(InputError, match="calibration scenes"):
        build(tiny_onnx, "ort-int8", tmp_path)


def test_unknown_engine_lists_valid_names():
    with pytest.raises(InputError, match="ort-fp32"):
        get_kind("ort-fp64")


def test_corrupt_onnx_is_one_sentence(tmp_path, tiny_onnx):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    ModelSpec.load(tiny_onnx).save(bad)
    with pytest.raises(EngineError, match="cannot load"):
        build(bad, "ort-fp32", tmp_path / "out")
    assert not (tmp_path / "out" / "bad.ort-fp32.onnx").exists()


def test_artifact_with_a_foreign_spec_is_refused(tmp_path, tiny_onnx):
    artifact = build(tiny_onnx, "ort-fp32", tmp_path)
    fake = tmp_path / "model.openvino-fp32.xml"
    fake.write_text("<net/>")
    ModelSpec.load(artifact).save(fake)  # an ORT spec beside an OpenVINO file
    with pytest.raises(SpecError, match="does not look like"):
        load(fake)
    orphan = tmp_path / "orphan.plan"
    orphan.write_bytes(b"plan")
    with pytest.raises(SpecError, match="No spec found"):
        load(orphan)


def test_every_kind_reports_availability():
    for name in KINDS:
        reason = availability(name)
        assert reason is None or (isinstance(reason, str) and len(reason.splitlines()) == 1)


@pytest.mark.parametrize("name", ["trtrtx-fp32", "trtrtx-fp16", "trtrtx-int8"])
def test_tensorrt_rtx_builds_plans_on_cpu(tmp_path, tiny_onnx, name):
    if (reason := availability(name, run=False)) is not None:
        pytest.skip(reason)
    spec = ModelSpec.load(tiny_onnx)
    artifact = build(tiny_onnx, name, tmp_path, calibration=_tiles(spec, 8))
    built = ModelSpec.load(artifact)
    assert artifact.suffix == ".plan" and artifact.stat().st_size > 1000
    assert built.build.options["plan_bytes"] == artifact.stat().st_size
    assert built.build.build_seconds > 0
    assert "tensorrt_rtx_bindings" in built.build.versions


def test_spec_that_does_not_match_the_artifact(tmp_path, tiny_onnx):
    artifact = build(tiny_onnx, "ort-fp32", tmp_path)
    spec = ModelSpec.load(artifact)
    spec.replace(tile=64).save(artifact)  # a spec from another model
    with pytest.raises(SpecError, match="takes input"):
        load(artifact)


def test_plan_from_another_tensorrt_version_is_refused(tmp_path, tiny_onnx):
    if (reason := availability("trtrtx-fp32", run=False)) is not None:
        pytest.skip(reason)
    artifact = build(tiny_onnx, "trtrtx-fp32", tmp_path)
    spec = ModelSpec.load(artifact)
    versions = {k: "0.0.1" for k in spec.build.versions}
    spec.replace(build=dataclasses.replace(spec.build, versions=versions)).save(artifact)
    with pytest.raises(SpecError, match="rebuild it"):
        load(artifact)
