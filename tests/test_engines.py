"""Engines built from a small real ONNX graph, run by the real runtimes."""

import dataclasses
import importlib.util
import os

import numpy as np
import pytest

from segbench.engines.registry import KINDS, STATES, availability, build, get_kind, load, probe
from segbench.errors import EngineError, InputError, SpecError, UsageError
from segbench.spec import ModelSpec
from tests.conftest import require_engine


def _tiles(spec, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, spec.num_bands, spec.tile, spec.tile)).astype(np.float32)


def _reference(onnx_path, tiles):
    """The tiny ONNX graph evaluated in numpy from its own nodes: no runtime under test involved."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    values = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    values[model.graph.input[0].name] = tiles.astype(np.float64)
    for node in model.graph.node:
        a = [values[name] for name in node.input]
        if node.op_type == "Sub":
            out = a[0] - a[1]
        elif node.op_type == "Div":
            out = a[0] / a[1]
        elif node.op_type == "Relu":
            out = np.maximum(a[0], 0)
        elif node.op_type == "Conv":
            pads = next((list(x.ints) for x in node.attribute if x.name == "pads"), [0, 0, 0, 0])
            x = np.pad(a[0], ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
            k = a[1].shape[-1]
            windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
            out = np.einsum("nchwij,ocij->nohw", windows, a[1]) + a[2].reshape(1, -1, 1, 1)
        else:
            raise NotImplementedError(node.op_type)
        values[node.output[0]] = out
    return values[model.graph.output[0].name].astype(np.float32)


@pytest.mark.parametrize("name, min_agree", [
    ("ort-fp32", 1.0), ("ort-fp16", 0.995), ("ort-int8", 0.97),
    ("openvino-fp32", 0.999), ("openvino-int8", 0.97),
])
def test_cpu_engines_build_load_and_agree(tmp_path, tiny_onnx, name, min_agree):
    require_engine(name)
    spec = ModelSpec.load(tiny_onnx)
    calib = _tiles(spec, 16, seed=1)
    artifact = build(tiny_onnx, name, tmp_path / "engines", calibration=calib)
    built = ModelSpec.load(artifact)
    assert built.build.engine == name and built.build.precision == get_kind(name).precision
    assert built.build.artifact_bytes > 0 and built.build.build_seconds >= 0
    if get_kind(name).precision == "int8":
        qoperator = built.build.options["int8"]["format"] == "qop-u8"  # QLinearConv wants int32 biases
        assert built.build.calibration_digest
        assert built.build.options["bias"] == ("int32" if qoperator else "float")
    engine = load(artifact)
    tiles = _tiles(spec)
    out = engine.infer(tiles)
    engine.close()
    ref = _reference(tiny_onnx, tiles)
    assert out.shape == ref.shape and out.dtype == np.float32
    if get_kind(name).precision == "fp32":
        assert float(np.max(np.abs(out - ref))) < 1e-3
    agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
    assert agree >= min_agree, f"{name} agrees on {agree:.4%}"


@pytest.mark.parametrize("name", ["ort-fp32", "openvino-fp32"])
def test_threads_caps_the_runtimes_cpu_threads(tmp_path, tiny_onnx, name):
    require_engine(name)
    artifact = build(tiny_onnx, name, tmp_path)
    tiles = _tiles(ModelSpec.load(tiny_onnx))
    with load(artifact) as free, load(artifact, threads=1) as capped:
        if name.startswith("ort"):
            used = [e._session.get_session_options().intra_op_num_threads for e in (free, capped)]
        else:
            used = [int(e._compiled.get_property("INFERENCE_NUM_THREADS")) for e in (free, capped)]
        assert used[1] == 1 and (used[0] != 1 or os.cpu_count() == 1)  # the default: left alone
        np.testing.assert_allclose(capped.infer(tiles), free.infer(tiles), atol=1e-4)


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
    with pytest.raises(UsageError, match="ort-fp32"):
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


def _installed(module):
    """Whether ``module`` is installed (found on the path), whether or not its import works: an
    installed runtime must give available engines, so a broken one fails here instead of passing
    for an absent one."""
    return importlib.util.find_spec(module) is not None


def test_every_kind_reports_availability():
    found = {name: probe(name) for name in KINDS}
    reasons = {name: f.reason for name, f in found.items()}
    for f in found.values():
        assert f.state in STATES and (f.reason is None) == (f.state == "available")
        assert f.reason is None or (isinstance(f.reason, str) and len(f.reason.splitlines()) == 1)
    assert not [f.reason for f in found.values() if f.state == "broken"]  # every installed runtime loads
    assert {name: availability(name) for name in KINDS} == reasons
    assert reasons["ort-fp32"] is None and reasons["ort-int8"] is None  # core dependency
    if _installed("onnxconverter_common"):
        assert reasons["ort-fp16"] is None
    if _installed("openvino"):
        assert reasons["openvino-fp32"] is None and reasons["openvino-int8"] is None
    if _installed("torch"):
        import torch

        assert reasons["torch-fp32"] is None
        if not torch.cuda.is_available():
            assert "CUDA" in reasons["torch-fp16"] and "CUDA" in reasons["torch-bf16"]
    if not _installed("tensorrt"):
        for name in ("trt-fp32", "trt-fp16", "trt-int8"):
            assert found[name].state == "unavailable" and found[name].not_installed, found[name]
            assert "tensorrt" in reasons[name] and "NVIDIA GPU" in reasons[name], reasons[name]
    if _installed("tensorrt_rtx_bindings"):
        assert availability("trtrtx-fp32", run=False) is None


@pytest.mark.parametrize("name", ["trtrtx-fp32", "trtrtx-fp16", "trtrtx-int8"])
def test_tensorrt_rtx_builds_plans_on_cpu(tmp_path, tiny_onnx, name):
    require_engine(name, run=False)
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
    require_engine("trtrtx-fp32", run=False)
    artifact = build(tiny_onnx, "trtrtx-fp32", tmp_path)
    spec = ModelSpec.load(artifact)
    versions = {k: "0.0.1" for k in spec.build.versions}
    spec.replace(build=dataclasses.replace(spec.build, versions=versions)).save(artifact)
    with pytest.raises(SpecError, match="rebuild it"):
        load(artifact)


def test_ort_session_options_are_recorded_and_used(tmp_path, tiny_onnx):
    from segbench.engines.onnxruntime import SESSION_OPTIONS

    artifact = build(tiny_onnx, "ort-fp32", tmp_path)
    recorded = ModelSpec.load(artifact).build.options["session_options"]
    assert recorded == SESSION_OPTIONS and recorded["enable_mem_pattern"] is False
    # The session runs with the recorded options, not whatever the defaults are at load time.
    spec = ModelSpec.load(artifact)
    other = {**recorded, "enable_mem_pattern": True}
    options = {**spec.build.options, "session_options": other}
    spec.replace(build=dataclasses.replace(spec.build, options=options)).save(artifact)
    with load(artifact) as engine:
        assert engine.session_options == other
        assert engine._session.get_session_options().enable_mem_pattern is True


def test_ort_runs_single_tiles_on_streams_in_throughput_mode(tmp_path, tiny_onnx):
    """Throughput mode for single tiles: one stream per allowed thread, each session.run on one
    intra-op thread, the stream's outputs in order and equal to latency mode's; larger batches and
    latency mode keep one call of every thread."""
    artifact = build(tiny_onnx, "ort-fp32", tmp_path)
    batches = [_tiles(ModelSpec.load(tiny_onnx), 1, seed) for seed in range(7)]
    with load(artifact) as latency:
        assert latency.inflight == 1 and latency.config == "one request at a time"
        want = [latency.infer(b) for b in batches]
    with load(artifact, mode="throughput", batch=4, threads=2) as tiler:
        assert tiler.inflight == 1 and tiler.session_options["intra_op_num_threads"] == 2
        # so the bench and the batch sweep load again for batch 1 only
        assert type(tiler).tuned_for(1) and not type(tiler).tuned_for(4)
    with load(artifact, mode="throughput", batch=1, threads=2) as streams:
        assert streams.inflight == 2 and streams.config == "2 streams of one thread"
        assert streams._session.get_session_options().intra_op_num_threads == 1
        got = list(streams.infer_stream(iter(batches)))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(InputError):  # a failing batch mid-stream: the running ones are waited for
            list(streams.infer_stream(iter([batches[0], batches[1][:, :1], batches[2]])))


def test_torch_runs_every_cpu_call_on_the_engines_own_thread(tmp_path):
    """Calls from the main thread and from others all run the module on one thread of the engine's
    (torch's OpenMP pool is per calling thread: a second caller ran slower), with the same logits."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from tests.conftest import make_spec, tiny_conv_pt2

    require_engine("torch-fp32")
    spec = make_spec()
    artifact = tiny_conv_pt2(tmp_path / "model.pt2", spec)
    tiles = _tiles(spec, 2)
    with load(artifact) as engine:
        ran_on = []
        engine._module.register_forward_pre_hook(lambda *_: ran_on.append(threading.get_ident()))
        first = engine.infer(tiles)
        with ThreadPoolExecutor(2) as pool:
            others = list(pool.map(engine.infer, [tiles] * 4))
        assert len(ran_on) == 5 and len(set(ran_on)) == 1 and ran_on[0] != threading.get_ident()
        for out in others:
            np.testing.assert_array_equal(out, first)
        with torch.inference_mode():
            np.testing.assert_allclose(first, engine._module(torch.from_numpy(tiles)).numpy(), rtol=1e-6)
    assert ran_on[0] not in {t.ident for t in threading.enumerate()}  # closing the engine ended its thread


def test_ort_chosen_options_peak_below_mem_pattern(tmp_path):
    """Each session in its own process (VmHWM): the recorded options against ORT's mem pattern."""
    import importlib.util
    from pathlib import Path

    from tests.conftest import make_spec, tiny_conv_onnx

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ort_options.py"
    module_spec = importlib.util.spec_from_file_location("bench_ort_options", script)
    bench = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench)
    model = tiny_conv_onnx(tmp_path / "model.onnx", make_spec(tile=512))
    artifact = build(model, "ort-fp32", tmp_path / "engines")
    chosen = ModelSpec.load(artifact).build.options["session_options"]
    pattern = {**chosen, "enable_mem_pattern": True}
    peak = {name: bench.run_child(artifact, options, batch=4, runs=2)["peak_bytes"]
            for name, options in (("chosen", chosen), ("pattern", pattern))}
    # measured: 248 MB against 340 MB (tiny conv net, batch 4 at 512)
    assert peak["chosen"] * 1.1 < peak["pattern"], {k: v / 2**20 for k, v in peak.items()}
