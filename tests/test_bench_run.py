"""segbench bench on a small real ONNX model: reports, skips, bad input, interruption."""

import json

import numpy as np
import pytest

from segbench.bench.run import BenchConfig, run_bench
from segbench.errors import InputError
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
    return BenchConfig(**{**base, **kw})


def test_bench_report_is_complete_and_repeatable(tmp_path, tiny_onnx, scenes):
    report = run_bench(_config(tmp_path, tiny_onnx, scenes))
    rows = {r["name"]: r for r in report["engines"]}
    assert rows["trt-fp16"]["status"] == "skipped" and rows["trt-fp16"]["reason"]
    ok = [rows["ort-fp32"], rows["openvino-fp32"]]
    assert all(r["status"] == "ok" for r in ok)
    assert rows["openvino-fp32"]["accuracy"]["agreement"] >= 0.999
    assert rows["ort-fp32"]["scene"]["km2_per_h"] > 0 and rows["ort-fp32"]["artifact_bytes"] > 0
    assert report["machine"]["cores"] >= 1 and "onnxruntime" in report["machine"]["libraries"]
    saved = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert [r["name"] for r in saved["engines"]] == [r["name"] for r in report["engines"]]
    again = run_bench(_config(tmp_path, tiny_onnx, scenes, out=tmp_path / "again"))
    for a, b in zip(report["engines"][:2], again["engines"][:2], strict=True):
        assert a["accuracy"]["confusion"] == b["accuracy"]["confusion"]  # exactly the same


def test_scene_without_labels_still_measures_latency(tmp_path, tiny_onnx, scenes):
    report = run_bench(_config(tmp_path, tiny_onnx, scenes, labels=[], engines=["ort-fp32"]))
    row = report["engines"][0]
    assert row["accuracy"] is None and row["latency"]["batch1"]["p50"] > 0


def test_misaligned_labels_and_unknown_engines(tmp_path, tiny_onnx, scenes):
    image, _ = scenes
    other = write_scene(tmp_path / "other.tif", np.zeros((1, 90, 100), np.uint8))
    with pytest.raises(InputError, match="does not align"):
        run_bench(_config(tmp_path, tiny_onnx, (image, other)))
    with pytest.raises(InputError, match="choose one of"):
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
