"""segbench bench on a small real ONNX model: reports, skips, bad input, interruption."""

import json

import numpy as np
import pytest

from segbench.bench.run import BenchConfig, run_bench
from segbench.errors import InputError, UsageError
from tests.conftest import write_scene


@pytest.fixture
def scenes(tmp_path):
    rng = np.random.default_rng(0)
    image = write_scene(tmp_path / "scene.tif", rng.integers(0, 255, (3, 90, 110), dtype=np.uint8))
    labels = write_scene(tmp_path / "labels.tif", rng.integers(0, 3, (1, 90, 110), dtype=np.uint8),
                         nodata=255)
    return image, labels


def _config(tmp_path, model, scenes, **kw):
    image, labels = scenes
    base = dict(model=model, engines=["ort-fp32", "openvino-fp32", "trt-fp16"], scenes=[image],
                labels=[labels], reference="ort-fp32", overlap=8, batch=2, out=tmp_path / "bench",
                quick=True)
    return BenchConfig.flat(**{**base, **kw})


def test_bench_report_is_complete_and_repeatable(tmp_path, tiny_onnx, scenes):
    report = run_bench(_config(tmp_path, tiny_onnx, scenes))
    rows = {r.name: r for r in report.engines}
    assert rows["trt-fp16"].status == "skipped" and rows["trt-fp16"].reason
    ok = [rows["ort-fp32"], rows["openvino-fp32"]]
    assert all(r.status == "ok" for r in ok)
    assert rows["openvino-fp32"].accuracy.agreement >= 0.999
    assert rows["ort-fp32"].scene.km2_per_h > 0 and rows["ort-fp32"].artifact_bytes > 0
    assert report.machine.cores >= 1 and "onnxruntime" in report.machine.libraries
    saved = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert [r["name"] for r in saved["engines"]] == [r.name for r in report.engines]
    again = run_bench(_config(tmp_path, tiny_onnx, scenes, out=tmp_path / "again"))
    for a, b in zip(report.engines[:2], again.engines[:2], strict=True):
        assert a.accuracy.confusion == b.accuracy.confusion  # exactly the same


def test_scene_without_labels_still_measures_latency(tmp_path, tiny_onnx, scenes):
    report = run_bench(_config(tmp_path, tiny_onnx, scenes, labels=[], engines=["ort-fp32"]))
    row = report.engines[0]
    assert row.accuracy is None and row.latency.batch1.p50 > 0


def test_misaligned_labels_and_unknown_engines(tmp_path, tiny_onnx, scenes):
    image, _ = scenes
    other = write_scene(tmp_path / "other.tif", np.zeros((1, 90, 100), np.uint8))
    with pytest.raises(InputError, match="does not align"):
        run_bench(_config(tmp_path, tiny_onnx, (image, other)))
    with pytest.raises(UsageError, match="choose one of"):
        run_bench(_config(tmp_path, tiny_onnx, scenes, engines=["ort-fp33"]))


def test_interrupted_bench_keeps_finished_engines(tmp_path, tiny_onnx, scenes, monkeypatch):
    import segbench.bench.run as run

    real = run.run_in_child
    calls = []

    def interrupt_second(fn, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(fn, *args)

    monkeypatch.setattr(run, "run_in_child", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_bench(_config(tmp_path, tiny_onnx, scenes))
    saved = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert [r["name"] for r in saved["engines"]] == ["ort-fp32"]


def test_agreement_without_labels(tmp_path, tiny_onnx, scenes):
    """No ground truth: the accuracy columns stay empty, agreement with the reference is measured."""
    from segbench.bench.tables import table_rows

    report = run_bench(_config(tmp_path, tiny_onnx, scenes, labels=[],
                               engines=["ort-fp32", "openvino-fp32"]))
    rows = {r.name: r for r in report.engines}
    assert rows["ort-fp32"].accuracy is None  # the reference: nothing to compare with
    accuracy = rows["openvino-fp32"].accuracy
    assert accuracy.agreement >= 0.999 and accuracy.miou is None
    header, cells = table_rows(report)
    ov = cells[[r.name for r in report.engines].index("openvino-fp32")]
    assert ov[header.index("agree %")] != "" and ov[header.index("mIoU %")] == ""


def _unrunnable_onnx(path, spec):
    """A real ONNX graph ONNX Runtime loads but cannot run (3x32x32 values reshaped into rows of 7)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    t = spec.tile
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["pixels", "shape"], ["logits"])], "unrunnable",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", spec.num_bands, t, t])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([-1, 7], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_an_engine_that_raises_becomes_a_failed_row(tmp_path, tiny_onnx, tiny_spec, scenes):
    """ONNX Runtime's own error in the measuring child: one failed row, its traceback in a log,
    and the bench goes on to the next engine."""
    from segbench.engines.registry import build

    config = _config(tmp_path, tiny_onnx, scenes, engines=["ort-fp32", "openvino-fp32"])
    # a built engine whose graph is then replaced: the bench reuses the build, ONNX Runtime fails
    _unrunnable_onnx(build(tiny_onnx, "ort-fp32", config.out / "engines"), tiny_spec)
    report = run_bench(config)
    rows = {r.name: r for r in report.engines}
    failed = rows["ort-fp32"]
    assert failed.status == "failed" and len(failed.reason.splitlines()) == 1
    assert "Reshape" in failed.reason or "shape" in failed.reason
    log = config.out / "ort-fp32.error.log"
    assert failed.log == str(log)
    text = log.read_text()
    assert "Traceback" in text and "onnxruntime" in text and "measure_engine" in text
    assert rows["openvino-fp32"].status == "ok" and rows["openvino-fp32"].accuracy.miou > 0
    saved = json.loads((config.out / "report.json").read_text())
    assert [r["status"] for r in saved["engines"]] == ["failed", "ok"]


def test_a_runtime_error_while_building_does_not_stop_the_bench(tmp_path, tiny_spec, scenes):
    """ONNX Runtime's own error in the bench process (int8 calibration runs the graph), then the next
    engine (which fails in its measuring child): two failed rows, each with its log, and a report."""
    from segbench.spec import BuildRecord

    model = _unrunnable_onnx(tmp_path / "unrunnable.onnx", tiny_spec)
    tiny_spec.replace(build=BuildRecord(backend="onnx", precision="fp32")).save(model)
    config = _config(tmp_path, model, scenes, engines=["ort-int8", "ort-fp32"], reference="ort-int8",
                     calib=[scenes[0]], calib_tiles=2)
    report = run_bench(config)
    rows = {r.name: r for r in report.engines}
    assert [r.name for r in report.engines] == ["ort-int8", "ort-fp32"]
    for name, where in (("ort-int8", "qualify"), ("ort-fp32", "measure_engine")):
        row = rows[name]
        assert row.status == "failed" and row.reason.startswith("Fail: [ONNXRuntimeError]")
        text = (config.out / f"{name}.error.log").read_text()
        assert row.log == str(config.out / f"{name}.error.log") and where in text
    assert (config.out / "report.md").is_file()


def test_a_scene_without_crs_is_said_once_not_per_engine(tmp_path, tiny_onnx, capfd):
    """The parent says it for the scene; the child that measures each engine stays quiet."""
    import warnings

    rng = np.random.default_rng(0)
    image = write_scene(tmp_path / "nocrs.tif", rng.integers(0, 255, (3, 90, 110), dtype=np.uint8), crs=None)
    labels = write_scene(tmp_path / "nocrs-labels.tif", rng.integers(0, 3, (1, 90, 110), dtype=np.uint8),
                         nodata=255, crs=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = _config(tmp_path, tiny_onnx, (image, labels), engines=["ort-fp32", "openvino-fp32"])
        report = run_bench(config)
    assert [r.status for r in report.engines] == ["ok", "ok"]
    assert sum("nocrs.tif has no CRS" in str(w.message) for w in caught) == 1
    assert "no CRS" not in capfd.readouterr().err  # what the engines' children would have printed


def test_an_engine_task_does_not_read_the_inputs_again(tmp_path, tiny_onnx):
    """A study on Dask measures each engine as a task: the labels (here with an id outside the
    classes) and the scenes were checked, and said, where the bench started, not again per engine."""
    import warnings

    from segbench.bench.labels import LabelsWarning
    from segbench.bench.run import BenchRun, measure_engine_task

    rng = np.random.default_rng(0)
    image = write_scene(tmp_path / "s.tif", rng.integers(0, 255, (3, 90, 110), dtype=np.uint8))
    ids = rng.integers(0, 3, (1, 90, 110), dtype=np.uint8)
    ids[0, :5] = 7
    labels = write_scene(tmp_path / "l.tif", ids, nodata=255)
    config = _config(tmp_path, tiny_onnx, (image, labels), engines=["ort-fp32"])
    with pytest.warns(LabelsWarning, match="outside the model's classes"):
        BenchRun(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelsWarning)
        row = measure_engine_task(config, "ort-fp32", None)
    assert row.ok and row.accuracy.confusion
