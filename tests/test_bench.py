"""Metrics, latency statistics, memory probes and ranking (more in test_metrics, test_latency, ...)."""

import numpy as np
import pytest

from segbench.bench.latency import LatencyStats, time_callable
from segbench.bench.loadgen_results import ScenarioResult, ScenarioSettings
from segbench.bench.memory import PeakMemory, run_in_child
from segbench.bench.metrics import AgreementCounter, ConfusionMatrix, metrics_from_counts
from segbench.bench.model import EngineRow
from segbench.bench.rank import RankRule, pareto_front, rank
from segbench.errors import EngineError
from segbench.raster import label_targets

CLASSES = ("a", "b", "c", "clutter")


def test_hand_computed_metrics():
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 3]])
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    m = cm.metrics(CLASSES)
    # class a: tp 1, fp 1 (the 2 predicted as 0), fn 1 -> 1/3; b: tp 2, fp 1 -> 2/3; c: 1/2
    assert m["per_class"]["a"]["iou"] == pytest.approx(1 / 3)
    assert m["per_class"]["b"]["iou"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["iou"] == pytest.approx(1 / 2)
    assert m["per_class"]["clutter"]["iou"] is None  # absent from labels and predictions (ignored px)
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["oa"] == pytest.approx(4 / 6) and m["pixels"] == 6
    po, pe = 4 / 6, (2 * 2 + 2 * 3 + 2 * 1) / 36
    assert m["kappa"] == pytest.approx((po - pe) / (1 - pe))


def test_isprs_convention_and_streaming():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (50, 60))
    pred = np.where(rng.random((50, 60)) < 0.7, label, rng.integers(0, 4, (50, 60)))
    whole = ConfusionMatrix(4)
    whole.update(pred, label)
    chunks = ConfusionMatrix(4)
    for i in range(0, 50, 7):
        chunks.update(pred[i:i + 7], label[i:i + 7])
    np.testing.assert_array_equal(whole.counts, chunks.counts)
    isprs = metrics_from_counts(whole.counts, CLASSES, exclude=("clutter",))
    ious = [isprs["per_class"][c]["iou"] for c in CLASSES[:3]]
    assert isprs["miou"] == pytest.approx(np.mean(ious))
    assert isprs["oa"] == whole.metrics(CLASSES)["oa"]  # OA over all classes


def test_invalid_pixels_are_excluded():
    cm = ConfusionMatrix(3)
    label = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 0, 2])
    cm.update(pred, label_targets(label, valid=np.array([True, True, False, True])))
    assert cm.counts.sum() == 3 and np.trace(cm.counts) == 3


def test_agreement_counter():
    a = AgreementCounter()
    a.update(np.array([1, 2, 3]), np.array([1, 0, 3]))
    a.update(np.array([4]), np.array([4]), valid=np.array([False]))
    assert a.value == pytest.approx(2 / 3)


def test_latency_statistics():
    stats = time_callable(lambda: np.linalg.svd(np.ones((60, 60))), warmup=1, min_iters=64,
                          min_seconds=0.05, max_iters=100)
    assert 64 <= stats.n <= 100
    assert stats.min <= stats.p50 <= stats.p90 <= stats.max and stats.p99 is None
    s = LatencyStats.from_samples([0.001, 0.002, 0.003])
    assert s.mean == pytest.approx(2.0) and s.cv == pytest.approx(np.std([1, 2, 3]) / 2)


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory() as mem:
        block = np.ones(200 * 2**20 // 8)
        block += 1
        del block
    assert mem.peak_rss_bytes - mem.baseline_rss_bytes > 180 * 2**20


def _square(x):
    return x * x


def _fail(x):
    raise ValueError(f"bad value {x}")


def test_run_in_child():
    assert run_in_child(_square, 7) == 49
    with pytest.raises(EngineError, match="ValueError: bad value 3") as info:
        run_in_child(_fail, 3)
    assert "Traceback" in info.value.details and "_fail" in info.value.details


def _row(name, miou, p50, mps, status="ok") -> EngineRow:
    stats = {"n": 80, "p50": p50, "p90": p50 * 1.1, "mean": p50, "std": 0.0, "min": p50, "max": p50}
    return EngineRow.model_validate({
        "name": name, "status": status, "device": "cpu", "accuracy": {"miou": miou, "oa": 0.9},
        "latency": {"batch1": stats, "batch": 1}, "scene": {"megapixels_per_s": mps, "seconds": 1.0,
                                                            "megapixels": mps},
        "memory": {"peak_rss_bytes": 2**29}, "artifact_bytes": 2**20})


def test_rank_and_pareto():
    rows = [_row("torch-fp32", 0.80, 70, 0.7), _row("ort-fp32", 0.80, 28, 1.0),
            _row("ort-int8", 0.785, 44, 0.9), _row("openvino-int8", 0.795, 14, 2.2),
            EngineRow(name="trt-fp16", status="skipped", reason="no GPU")]
    rank(rows, RankRule("torch-fp32"))
    by = {r.name: r for r in rows}
    assert not by["ort-int8"].qualified and "99%" in by["ort-int8"].rank_reason
    assert [by[n].rank for n in ("openvino-int8", "ort-fp32", "torch-fp32")] == [1, 2, 3]
    assert {r.name for r in pareto_front([r for r in rows if r.ok])} == {"ort-fp32", "openvino-int8"}
    assert by["trt-fp16"].rank is None
    budget = rank([r.model_copy() for r in rows], RankRule("torch-fp32", max_latency_ms=20))
    assert [r.name for r in budget if r.qualified] == ["openvino-int8"]
    # ranked by the Server figure: an engine with a higher Server QPS goes first whatever its MP/s
    by_server = [r.model_copy() for r in rows]
    slow = next(r for r in by_server if r.name == "torch-fp32")
    slow.scenarios = [ScenarioResult(engine="torch-fp32", scenario="server", valid=True, figure=50.0,
                                     unit="QPS", settings=ScenarioSettings.default("server"), log_dir="x")]
    rank(by_server, RankRule("torch-fp32", by="server"))
    ranked = [r.name for r in sorted(by_server, key=lambda r: r.rank or 99)]
    assert ranked[:2] == ["torch-fp32", "openvino-int8"]

