"""MLPerf scenarios with the real LoadGen on a real (tiny) ONNX Runtime engine: short runs, small
query counts. The accuracy log must score as the tiles do, and a batcher that drops, duplicates or
reorders responses must fail a run."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from segbench.bench.scenarios import (
    ScenarioResult,
    ScenarioSettings,
    labels_of,
    loadgen,
    loadgen_dir,
    read_accuracy_log,
    run_scenario,
    run_scenarios,
    score_accuracy_log,
    score_labels,
)
from segbench.engines.registry import build, load
from segbench.errors import EngineError, RuntimeMissingError, UsageError
from tests.test_batcher import DroppingBatcher, DuplicatingBatcher, ReorderingBatcher

pytest.importorskip("mlperf_loadgen")

SHORT = {"min_duration_ms": 300, "min_query_count": 64, "stall_s": 5.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny engine, 24 tiles and their labels (the engine's own labels with some changed, and
    some pixels ignored), built once for the module."""
    from tests.conftest import make_spec, tiny_conv_onnx

    folder = tmp_path_factory.mktemp("scenarios")
    artifact = build(tiny_conv_onnx(folder / "model.onnx", make_spec()), "ort-fp32", folder)
    rng = np.random.default_rng(0)
    tiles = rng.uniform(0, 255, (24, 3, 32, 32)).astype(np.float32)
    with load(artifact) as engine:
        pred = labels_of(engine.infer(tiles))
    targets = np.where(rng.random(pred.shape) < 0.2, rng.integers(0, 3, pred.shape), pred).astype(np.uint8)
    targets[:, :2] = 255
    return artifact, tiles, targets, pred


def test_scenarios_figures_logs_and_accuracy(setup, tmp_path):
    artifact, tiles, targets, pred = setup
    settings = [ScenarioSettings.default(s, **SHORT)
                for s in ("single-stream", "multi-stream", "offline", "accuracy")]
    results = run_scenarios(artifact, tiles, tmp_path, settings, targets)
    by = {r.scenario: r for r in results}
    assert [r.scenario for r in results] == ["single-stream", "multi-stream", "offline", "accuracy"]
    for r in results:
        assert (loadgen_dir(tmp_path, "ort-fp32", r.scenario) / "mlperf_log_summary.txt").is_file()
        assert ScenarioResult.from_dict(r.to_dict()) == r
        assert sum(r.batch_histogram.values()) > 0
    assert by["single-stream"].valid and by["single-stream"].unit == "ms"
    assert by["single-stream"].figure == pytest.approx(by["single-stream"].p90_ms)
    assert by["single-stream"].batch_histogram == {1: by["single-stream"].samples}
    assert by["multi-stream"].figure > 0 and by["multi-stream"].p99_ms is not None
    assert by["offline"].unit == "samples/s" and by["offline"].figure > 0
    assert by["offline"].mean_batch > 1
    acc = by["accuracy"]
    assert acc.accuracy_ok and acc.figure == 1.0 and acc.samples == len(tiles)
    direct = score_labels(pred, targets, 3)  # the same tiles scored in this process
    assert acc.confusion == tuple(map(tuple, direct.counts))
    log = loadgen_dir(tmp_path, "ort-fp32", "accuracy")
    np.testing.assert_array_equal(read_accuracy_log(log, (32, 32), len(tiles)), pred)
    np.testing.assert_array_equal(score_accuracy_log(log, targets, 3).counts, direct.counts)
    assert not list((tmp_path / "ort-fp32" / "loadgen").glob(".*"))  # no staging or tile files left


@pytest.mark.parametrize("broken", [ReorderingBatcher, DuplicatingBatcher])
def test_the_accuracy_check_fails_when_answers_are_another_tiles(setup, tmp_path, broken):
    artifact, tiles, targets, _ = setup
    result = run_scenario(artifact, tiles, ScenarioSettings.default("accuracy", **SHORT), tmp_path / "acc",
                          targets, batcher_cls=broken)
    assert not result.accuracy_ok and not result.valid
    assert result.mismatched_tiles and result.figure < 1.0
    assert result.confusion != result.direct_confusion


def test_a_batcher_that_drops_answers_fails_the_run_instead_of_hanging(setup, tmp_path):
    artifact, tiles, _, _ = setup
    settings = ScenarioSettings.default("offline", **{**SHORT, "stall_s": 1.5})
    start = time.monotonic()
    with pytest.raises(EngineError, match="unanswered .* dropped responses"):
        run_scenario(artifact, tiles, settings, tmp_path / "off", batcher_cls=DroppingBatcher)
    assert time.monotonic() - start < 30
    assert not (tmp_path / "off").exists() and not list(tmp_path.glob(".off*"))


def test_samples_on_the_engines_device_answer_as_on_the_host(setup, tmp_path):
    """A torch engine with its samples on its device (the CPU here; the GPU's path, which is the
    default off the CPU): batches stacked there, labels reduced there, the accuracy log equal to the
    engine run directly, as on the host."""
    pytest.importorskip("torch", reason="torch is not installed: the device batcher is torch's")
    from tests.conftest import make_spec, tiny_conv_pt2

    _, tiles, targets, _ = setup
    artifact = tiny_conv_pt2(tmp_path / "model.pt2", make_spec())
    with load(artifact) as engine:
        pred = labels_of(engine.infer(tiles))
    settings = [ScenarioSettings.default(s, on_device=True, **SHORT) for s in ("offline", "accuracy")]
    offline, acc = run_scenarios(artifact, tiles, tmp_path, settings, targets)
    assert offline.settings.on_device and offline.valid and offline.mean_batch > 1
    assert acc.settings.on_device and acc.accuracy_ok and acc.mismatched_tiles == ()
    assert acc.confusion == tuple(map(tuple, score_labels(pred, targets, 3).counts))
    host = run_scenario(artifact, tiles, ScenarioSettings.default("offline", **SHORT), tmp_path / "host")
    assert host.settings.on_device is False  # a torch engine on the CPU batches on the host by default


def test_server_search_finds_the_highest_valid_qps(setup, tmp_path):
    artifact, tiles, _, _ = setup
    settings = ScenarioSettings.default("server", min_duration_ms=300, min_query_count=700,
                                        latency_bound_ms=250.0, search_seconds=8.0, capacity_qps=300.0)
    r = run_scenario(artifact, tiles, settings, tmp_path / "server")
    assert r.valid and r.figure == r.target_qps and r.unit == "QPS"
    valid = [p for p in r.points if p.valid]
    assert r.figure == max(p.target_qps for p in valid) and r.p99_ms <= 250.0
    full = [p for p in r.points if not p.probe]
    assert len(full) >= 2 and all(p.queries >= 700 for p in full)
    assert all(not p.valid for p in r.points if p.probe)  # probes only guide the search
    assert (tmp_path / "server" / "mlperf_log_summary.txt").is_file()
    assert all((tmp_path / "server" / "points" / p.log_dir / "mlperf_log_detail.txt").is_file()
               for p in r.points)
    assert ScenarioResult.from_dict(r.to_dict()) == r


def test_the_server_search_batches_only_where_batches_pay(setup):
    """Largest batches no faster than single tiles, every stream busy (ONNX Runtime's one-thread
    streams): no batching; otherwise a full batch takes at most a third of the bound, at each
    worker's share of the rate."""
    from segbench.batcher import DynamicBatcher
    from segbench.bench.scenarios import BATCH_GAIN, _cap_batch

    artifact = setup[0]
    with load(artifact) as engine:
        cases = ((0.99 * 100 / BATCH_GAIN, 3000.0, 8), (1.01 * 100 / BATCH_GAIN, 3000.0, 1), (50.0, 60.0, 2))
        for single, bound_ms, want in cases:
            with DynamicBatcher(engine, max_batch=8) as batcher:
                _cap_batch(batcher, {"tiles_per_s": 100.0, "single_tiles_per_s": single,
                                     "bound_ms": bound_ms})
                assert batcher.max_batch == want, (single, bound_ms)


def test_no_valid_qps_is_a_result_not_an_error(setup, tmp_path):
    artifact, tiles, _, _ = setup
    settings = ScenarioSettings.default("server", min_duration_ms=200, min_query_count=50,
                                        latency_bound_ms=0.001, search_seconds=2.0, capacity_qps=200.0)
    r = run_scenario(artifact, tiles, settings, tmp_path / "server")
    assert not r.valid and r.figure is None and r.points
    assert r.note.startswith("no QPS meets p99 <= 0.001 ms (best p99 ")


def test_a_budget_that_holds_no_point_runs_none_and_says_what_would(setup, tmp_path):
    """An engine this slow (capacity 0.5 QPS): 100 queries at 0.3 QPS (the search's start) take
    334 s, past twice the 2 s budget."""
    artifact, tiles, _, _ = setup
    settings = ScenarioSettings.default("server", min_duration_ms=200, min_query_count=100,
                                        latency_bound_ms=100.0, search_seconds=2.0, capacity_qps=0.5)
    start = time.monotonic()
    r = run_scenario(artifact, tiles, settings, tmp_path / "server")
    assert time.monotonic() - start < 60 and not r.valid and r.figure is None and not r.points
    assert r.note == ("no full point: 100 queries at 0.3 QPS take about 334 s, past twice the 2 s budget "
                      "(--scenario-seconds 167 would hold one)")


def test_settings_refuse_nonsense_and_missing_loadgen_says_how_to_install(monkeypatch):
    with pytest.raises(UsageError, match="Unknown scenario 'servre'"):
        ScenarioSettings("servre")
    with pytest.raises(UsageError, match="latency bound"):
        ScenarioSettings.default("server", latency_bound_ms=-1)
    s = ScenarioSettings.default("server", latency_bound_ms=40.0)
    assert ScenarioSettings.from_dict(s.to_dict()) == s and s.qsl_rng_seed != 0
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)
    with pytest.raises(RuntimeMissingError, match=r"pip install 'segbench\[loadgen\]'"):
        loadgen()


CHILD = textwrap.dedent("""
    import signal, sys, numpy as np
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where started in a background job
    from segbench.bench.scenarios import ScenarioSettings, run_scenario
    tiles = np.random.default_rng(0).uniform(0, 255, (8, 3, 32, 32)).astype(np.float32)
    s = ScenarioSettings.default("single-stream", min_duration_ms=600_000)
    run_scenario(sys.argv[1], tiles, s, sys.argv[2])
""")


def test_ctrl_c_stops_a_loadgen_run_promptly_and_leaves_no_logs(setup, tmp_path):
    import psutil

    artifact = setup[0]
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(artifact), str(tmp_path / "ss")],
                            stderr=subprocess.PIPE, text=True)
    while not list(tmp_path.glob(".ss.tmp-*/mlperf_log_detail.txt")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - began < 120
        time.sleep(0.05)
    started_s = time.monotonic() - began  # the parent and its child started, the engine loaded
    children = [c for c in psutil.Process(proc.pid).children(recursive=True)  # not the resource tracker
                if "spawn_main" in " ".join(c.cmdline())]
    assert children
    time.sleep(0.3)  # LoadGen is running
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(2 * started_s + 10)
    assert time.monotonic() - start < 2 * started_s + 2  # however loaded the machine is
    assert "KeyboardInterrupt" in proc.stderr.read()
    assert list(tmp_path.iterdir()) == []
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)  # killed
