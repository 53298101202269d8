"""Batches in flight: OpenVINO's throughput mode and the tiler's in-order stream of outputs."""

from __future__ import annotations

import re
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segbench.engines.base import EngineBase
from segbench.errors import EngineError, InputError
from segbench.spec import ModelSpec
from segbench.tiler import segment
from segbench.tiler.windows import axis_starts
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

TILE, OVERLAP, BATCH = 32, 8, 4


@pytest.fixture(scope="module")
def ov_artifact(tmp_path_factory) -> Path:
    pytest.importorskip("openvino", reason="openvino is not installed: the throughput mode is OpenVINO's")
    from segbench.engines.registry import build

    d = tmp_path_factory.mktemp("ov")
    return build(tiny_conv_onnx(d / "model.onnx", make_spec(tile=TILE)), "openvino-fp32", d)


def _scene(tmp_path: Path) -> Path:
    """A scene of many windows whose last batch is partial."""
    h, w = 230, 250
    windows = len(axis_starts(h, TILE, TILE - OVERLAP)) * len(axis_starts(w, TILE, TILE - OVERLAP))
    assert windows > 8 * BATCH and windows % BATCH
    data = np.random.default_rng(3).integers(0, 256, (3, h, w), dtype=np.uint8)
    return write_scene(tmp_path / "scene.tif", data)


def _labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


class Synchronous(EngineBase):
    """Only ``infer`` of another engine: the tiler then runs one batch after another."""

    def __init__(self, engine) -> None:
        self.engine, self.spec, self.name, self.device = engine, engine.spec, engine.name, "cpu"

    def infer(self, tiles):
        return self.engine.infer(tiles)

    def close(self):
        pass


def _ended(request) -> bool:
    try:
        return request.wait_for(0)
    except RuntimeError:  # it failed, and has ended
        return True


def _no_stage_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("segbench-")]


@pytest.mark.parametrize("fixed", [None, BATCH, BATCH - 1], ids=["dynamic", "fixed", "fixed-split"])
def test_throughput_mode_keeps_the_synchronous_labels(tmp_path, ov_artifact, fixed):
    from segbench.engines.registry import load

    scene = _scene(tmp_path)
    with load(ov_artifact, mode="throughput", batch=fixed) as engine:
        assert engine.fixed_batch == fixed
        assert engine.config == f"THROUGHPUT, {engine.inflight} requests" + (f", batch {fixed}" * bool(fixed))
        if engine.inflight < 2:
            pytest.skip("OpenVINO wants one request on this machine: nothing would be in flight")
        streamed = segment(scene, engine, tmp_path / "streamed.tif", overlap=OVERLAP, blend="mean",
                           batch=BATCH)
        segment(scene, Synchronous(engine), tmp_path / "sync.tif", overlap=OVERLAP, blend="mean",
                batch=BATCH)
    with load(ov_artifact) as latency:
        assert latency.config == "LATENCY" and latency.inflight == 1
        segment(scene, latency, tmp_path / "latency.tif", overlap=OVERLAP, blend="mean", batch=BATCH)
    np.testing.assert_array_equal(_labels(tmp_path / "streamed.tif"), _labels(tmp_path / "sync.tif"))
    np.testing.assert_array_equal(_labels(tmp_path / "streamed.tif"), _labels(tmp_path / "latency.tif"))
    assert streamed.batches == -(-streamed.windows // BATCH)


def test_calls_from_several_threads_share_the_requests(ov_artifact):
    """``infer`` from several threads at once (the batcher's workers): each call gets its own
    tiles' outputs, every request is back in the pool after each call, never twice, whether the
    call's batch spread over several requests, ran alone, or failed."""
    from segbench.engines.registry import load

    with load(ov_artifact, mode="throughput", batch=1) as engine:
        # streams not pinned: the callers' threads share the cores (see the openvino module)
        assert engine._compiled.get_property("ENABLE_CPU_PINNING") is False
        rng = np.random.default_rng(4)
        batches = [rng.uniform(0, 255, (n, 3, TILE, TILE)).astype(np.float32) for n in (1, 3, 2, 5, 1, 4)]
        alone = [engine.infer(b) for b in batches]
        assert engine._pool.qsize() == engine.inflight
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(engine.infer, batches * 3))
        for got, want in zip(together, alone * 3, strict=True):
            np.testing.assert_array_equal(got, want)
        assert engine._pool.qsize() == engine.inflight
        with pytest.raises(InputError):  # a batch of the wrong shape ends the stream ...
            list(engine.infer_stream([batches[1], batches[1][:, :, :-1]]))
        assert engine._pool.qsize() == engine.inflight  # ... and hands its requests back


class ShuffledEngine(EngineBase):
    """A numpy engine whose ``infer_stream`` runs batches on a thread pool, finishing out of order.

    Each batch sleeps a shuffled delay before computing, so later batches
    often complete first (``completed`` records the order they did); the
    stream hands them back oldest first, as a runtime's async requests are.
    """

    def __init__(self, spec: ModelSpec, inflight: int = 4) -> None:
        self.spec, self.name, self.device, self.inflight = spec, "numpy-shuffled", "cpu", inflight
        rng = np.random.default_rng(7)
        self.weights = rng.normal(0, 1, (spec.num_classes, spec.num_bands)).astype(np.float32)
        self.bias = rng.normal(0, 2, (spec.num_classes, spec.tile, spec.tile)).astype(np.float32)
        self.delays = np.random.default_rng(11).permutation(64) * 0.0015
        self.completed: list[int] = []

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        return np.einsum("cb,nbhw->nchw", self.weights, tiles / 255.0) + self.bias

    def infer_stream(self, batches):
        def work(seq, tiles):
            threading.Event().wait(self.delays[seq % len(self.delays)])
            self.completed.append(seq)
            return self.infer(tiles)

        running = deque()
        with ThreadPoolExecutor(self.inflight, thread_name_prefix="shuffled") as pool:
            for seq, tiles in enumerate(batches):
                if len(running) == self.inflight:
                    yield running.popleft().result()
                running.append(pool.submit(work, seq, tiles))
            while running:
                yield running.popleft().result()

    def close(self):
        pass


def test_outputs_keep_window_order_when_batches_complete_out_of_order(tmp_path):
    scene = _scene(tmp_path)
    engine = ShuffledEngine(make_spec(tile=TILE))
    result = segment(scene, engine, tmp_path / "shuffled.tif", overlap=OVERLAP, blend="mean", batch=BATCH)
    assert sorted(engine.completed) == list(range(result.batches))
    assert engine.completed != sorted(engine.completed)  # the input under test really is out of order
    segment(scene, Synchronous(engine), tmp_path / "sync.tif", overlap=OVERLAP, blend="mean", batch=BATCH)
    np.testing.assert_array_equal(_labels(tmp_path / "shuffled.tif"), _labels(tmp_path / "sync.tif"))
    assert not [t for t in threading.enumerate() if t.name.startswith("shuffled")]


@pytest.mark.parametrize("fixed", [None, BATCH], ids=["dynamic", "fixed"])
def test_at_most_the_optimal_number_of_requests_in_flight(ov_artifact, fixed):
    from segbench.engines.base import Runner
    from segbench.engines.openvino import OpenVinoRunner
    from segbench.engines.registry import get_kind

    counts = {"pulled": 0, "handed": 0}
    at_pull: list[int] = []  # batches given to the engine and not yet handed back
    at_output: list[int] = []  # requests running while one's output is read

    class Counting(OpenVinoRunner):
        def _output(self, request):
            at_output.append(sum(not r.wait_for(0) for r in self._requests) + 1)
            return super()._output(request)

    engine: Runner = Counting(ov_artifact, ModelSpec.load(ov_artifact), get_kind("openvino-fp32"),
                              mode="throughput", batch=fixed)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 255, (BATCH, 3, TILE, TILE)).astype(np.float32) for _ in range(24)]

    def feed():
        for tiles in batches:
            counts["pulled"] += 1
            at_pull.append(counts["pulled"] - counts["handed"])
            yield tiles

    with engine:
        outputs = []
        for out in engine.infer_stream(feed()):
            counts["handed"] += 1
            outputs.append(out)
        streamed = list(at_output)
        expected = [engine.infer(b) for b in batches]
    n = engine.inflight
    assert len(streamed) == len(batches) and max(streamed) <= n
    assert max(at_pull) == n  # reached, never passed
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(got, want)


class FailsReadingOutput:
    """Mixin: reading one request's output raises, as a bug in copying it out would."""

    fail_at = 5

    def _output(self, request):
        self.outputs_read = getattr(self, "outputs_read", 0) + 1
        if self.outputs_read == self.fail_at:
            raise ValueError("output copy exploded")
        return super()._output(request)


def _static_batch_artifact(folder: Path, batch: int) -> Path:
    """An OpenVINO engine whose input batch is fixed: a partial batch is refused by the runtime."""
    import onnx

    from segbench.engines.registry import build

    path = tiny_conv_onnx(folder / "static.onnx", make_spec(tile=TILE))
    model = onnx.load(str(path))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, str(path))
    return build(path, "openvino-fp32", folder)


@pytest.mark.parametrize("failure", ["refused-shape", "output-read-fails"])
def test_a_request_failing_mid_scene_stops_cleanly(tmp_path, ov_artifact, failure):
    from segbench.engines.openvino import OpenVinoRunner
    from segbench.engines.registry import get_kind

    scene = _scene(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if failure == "refused-shape":
        artifact, runner, match = _static_batch_artifact(tmp_path, BATCH), OpenVinoRunner, "incompatible"
    else:
        runner = type("Failing", (FailsReadingOutput, OpenVinoRunner), {})
        artifact, match = ov_artifact, "output copy exploded"
    engine = runner(artifact, ModelSpec.load(artifact), get_kind("openvino-fp32"), mode="throughput")
    with engine:
        with pytest.raises(EngineError, match=match) as info:
            segment(scene, engine, out_dir / "labels.tif", overlap=OVERLAP, blend="mean", batch=BATCH,
                    confidence=out_dir / "confidence.tif")
        assert all(_ended(request) for request in engine._requests)  # no request still running
    assert "failed on a batch of shape" in str(info.value)
    assert _no_stage_threads()
    assert list(out_dir.iterdir()) == []
    assert all(p.name.startswith("static") for p in tmp_path.iterdir() if p.name not in ("scene.tif", "out"))


def test_bench_reports_which_configuration_measured_what(tmp_path, ov_artifact):
    from segbench.bench.run import _Job, measure_engine

    scene = _scene(tmp_path)
    job = _Job(artifact=str(ov_artifact), scenes=[str(scene)], labels=[], reference_labels=None,
               out_dir=str(tmp_path / "bench"), overlap=OVERLAP, blend="mean", batch=BATCH, isprs=False,
               quick=True)
    row = measure_engine(job)
    assert row["latency"].config == "LATENCY"
    assert re.fullmatch(rf"THROUGHPUT, \d+ requests, batch {BATCH}", row["scene"].config)
