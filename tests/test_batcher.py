"""The dynamic batcher on a real (tiny) ONNX Runtime engine: each request gets its own tile's output,
batches form up to the limit or the queue delay, and closing fails what is still queued."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from segbench.batcher import BatcherClosedError, BatcherStats, DeviceBatcher, DynamicBatcher
from segbench.engines.base import EngineBase
from segbench.engines.registry import build, load
from segbench.errors import InputError


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from tests.conftest import make_spec, tiny_conv_onnx

    folder = tmp_path_factory.mktemp("batcher")
    onnx_path = tiny_conv_onnx(folder / "model.onnx", make_spec())
    with load(build(onnx_path, "ort-fp32", folder)) as eng:
        yield eng


def tiles_for(engine, n: int, seed: int = 0) -> np.ndarray:
    spec = engine.spec
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, spec.num_bands, spec.tile, spec.tile)).astype(np.float32)


# -- broken batchers: the checks below must catch each --------------------------------------------


class ReorderingBatcher(DynamicBatcher):
    """Hands each request of a batch its neighbour's output."""

    def _run_batch(self, batch, buffer):
        n = len(batch)
        super()._run_batch([type(r)(batch[(i + 1) % n].tile, r.future, r.arrived)
                            for i, r in enumerate(batch)], buffer)


class DuplicatingBatcher(DynamicBatcher):
    """Gives every request of a batch the first request's output."""

    def _run_batch(self, batch, buffer):
        super()._run_batch(batch[:1], buffer)
        for r in batch[1:]:
            r.future.set_result(batch[0].future.result())


class DroppingBatcher(DynamicBatcher):
    """Never answers the last request of a batch of two or more."""

    def _run_batch(self, batch, buffer):
        super()._run_batch(batch[:-1] if len(batch) > 1 else batch, buffer)


def check_every_answer(batcher: DynamicBatcher, tiles: np.ndarray, threads: int = 4,
                       timeout: float = 10.0) -> None:
    """Submit ``tiles`` from several threads at once; every future must hold its own tile's output
    (the engine run on that tile alone), each exactly once, within ``timeout``."""
    futures: dict[int, object] = {}

    def client(k: int) -> None:
        for i in range(k, len(tiles), threads):
            futures[i] = batcher.submit(tiles[i])
            if i % 3 == 0:
                time.sleep(0.0005)

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(futures) == list(range(len(tiles)))
    outputs = [futures[i].result(timeout=timeout) for i in range(len(tiles))]  # a dropped one times out
    for i, out in enumerate(outputs):
        np.testing.assert_allclose(out, batcher.engine.infer(tiles[i:i + 1])[0], rtol=1e-5, atol=1e-4,
                                   err_msg=f"tile {i} got another tile's output")


def test_every_request_gets_its_own_output(engine):
    tiles = tiles_for(engine, 40)
    with DynamicBatcher(engine, max_batch=4, max_queue_ms=5) as batcher:
        check_every_answer(batcher, tiles)
        stats = batcher.stats()
    assert stats.requests == 40
    assert max(stats.histogram) <= 4 and stats.mean_batch > 1  # it did batch
    assert BatcherStats.from_dict(stats.to_dict()) == stats


@pytest.mark.parametrize(("broken", "failure"), [(ReorderingBatcher, AssertionError),
                                                  (DuplicatingBatcher, AssertionError),
                                                  (DroppingBatcher, TimeoutError)])
def test_the_check_catches_a_broken_batcher(engine, broken, failure):
    tiles = tiles_for(engine, 24, seed=1)
    with broken(engine, max_batch=4, max_queue_ms=20) as batcher:
        with pytest.raises(failure):
            check_every_answer(batcher, tiles, timeout=1.0)
        assert not batcher.closed  # the worker itself ran on: the fault is the one named


def test_a_full_queue_goes_without_waiting_the_delay(engine):
    tiles = tiles_for(engine, 8)
    with DynamicBatcher(engine, max_batch=8, max_queue_ms=600_000) as batcher:
        futures = batcher.submit_many(list(tiles))
        for f in futures:
            f.result(timeout=60)  # long before the ten minutes of delay
        assert batcher.stats().histogram == {8: 1}


def test_a_lone_request_waits_the_delay_then_goes_alone(engine):
    tile = tiles_for(engine, 1)[0]
    with DynamicBatcher(engine, max_batch=8, max_queue_ms=50) as batcher:
        start = time.perf_counter()
        batcher.submit(tile).result(timeout=30)
        waited = time.perf_counter() - start
    assert waited > 0.045  # it waited for company ...
    assert batcher.stats().histogram == {1: 1}  # ... then went alone


def test_batches_never_exceed_the_engines_limit(engine):
    class Limited(EngineBase):
        name, spec, max_batch = "limited", engine.spec, 3

        def infer(self, tiles):
            assert len(tiles) <= 3
            return engine.infer(tiles)

    with DynamicBatcher(Limited(), max_batch=16, max_queue_ms=5) as batcher:
        assert batcher.max_batch == 3
        check_every_answer(batcher, tiles_for(engine, 20))


def test_asyncio_awaits_the_futures(engine):
    tiles = tiles_for(engine, 6)

    async def main(batcher):
        return await asyncio.gather(*(asyncio.wrap_future(batcher.submit(t)) for t in tiles))

    with DynamicBatcher(engine, max_queue_ms=5) as batcher:
        outs = asyncio.run(main(batcher))
    np.testing.assert_allclose(np.stack(outs), engine.infer(tiles), rtol=1e-5, atol=1e-4)


def test_close_fails_pending_requests_and_refuses_new_ones(engine):
    gate = threading.Event()

    class Slow(EngineBase):
        name, spec = "slow", engine.spec

        def infer(self, tiles):
            gate.wait(5)
            return engine.infer(tiles)

    tiles = tiles_for(engine, 5)
    batcher = DynamicBatcher(Slow(), max_batch=1, max_queue_ms=0)
    futures = batcher.submit_many(list(tiles))
    time.sleep(0.1)  # the first is running, four wait
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    gate.set()
    closer.join(5)
    assert futures[0].result(timeout=5).shape == (3, 32, 32)  # the running batch finished
    for f in futures[1:]:
        with pytest.raises(BatcherClosedError):
            f.result(timeout=5)
    with pytest.raises(BatcherClosedError):
        batcher.submit(tiles[0])


def test_engine_failure_reaches_each_request_and_the_batcher_goes_on(engine):
    class Flaky(EngineBase):
        name, spec, calls = "flaky", engine.spec, 0

        def infer(self, tiles):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            return engine.infer(tiles)

    tiles = tiles_for(engine, 2)
    with DynamicBatcher(Flaky(), max_batch=2, max_queue_ms=1000) as batcher:
        first = batcher.submit_many(list(tiles))
        for f in first:
            with pytest.raises(RuntimeError, match="boom"):
                f.result(timeout=5)
        assert batcher.submit(tiles[0]).result(timeout=5).shape == (3, 32, 32)


def test_cancelled_requests_are_skipped_and_bad_tiles_refused(engine):
    tiles = tiles_for(engine, 3)
    with DynamicBatcher(engine, max_batch=8, max_queue_ms=300) as batcher:
        futures = batcher.submit_many(list(tiles))
        assert futures[1].cancel()
        assert futures[0].result(timeout=5).shape == (3, 32, 32)
        assert batcher.stats().histogram == {2: 1}
        with pytest.raises(InputError, match="one tile of shape"):
            batcher.submit(tiles)  # a batch, not a tile


class Overlap(EngineBase):
    """A real engine whose calls count how many run at once (the most seen in ``peak``)."""

    def __init__(self, engine) -> None:
        self.engine, self.spec, self.name, self.inflight = engine, engine.spec, engine.name, engine.inflight
        self.running = self.peak = 0
        self._lock = threading.Lock()

    def infer(self, tiles):
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.02)  # long enough for a second call to start beside it
            return self.engine.infer(tiles)
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.parametrize("name", ["openvino-fp32", "ort-fp32"])
def test_workers_keep_every_stream_of_the_engine_busy(tmp_path, name):
    """OpenVINO's throughput mode, and ONNX Runtime's for single tiles, run two calls at once: two
    workers call the engine together, and every answer is still its own tile's; a one-worker
    batcher never overlaps (the 0.49 of Server/Offline)."""
    pytest.importorskip(name.split("-")[0].replace("ort", "onnxruntime"),
                        reason=f"{name}'s runtime is not installed: its throughput streams are the case")
    from tests.conftest import make_spec, tiny_conv_onnx

    artifact = build(tiny_conv_onnx(tmp_path / "model.onnx", make_spec()), name, tmp_path)
    with load(artifact, mode="throughput", batch=1, threads=2) as streams:
        assert streams.inflight >= 2, streams.config
        tiles = tiles_for(streams, 32, seed=2)
        for workers, peak in ((None, streams.inflight), (1, 1)):
            counted = Overlap(streams)
            with DynamicBatcher(counted, max_batch=2, max_queue_ms=1, workers=workers) as batcher:
                assert batcher.workers == peak
                check_every_answer(batcher, tiles)
            assert counted.peak == peak
        with pytest.raises(InputError, match="workers must be 1 to"):
            DynamicBatcher(streams, workers=streams.inflight + 1)


def test_free_workers_share_the_waiting_requests(tmp_path):
    """Two requests and two free workers: one tile each, not two on one stream while the other idles;
    with one worker busy, the free one takes both."""
    pytest.importorskip("onnxruntime")
    from tests.conftest import make_spec, tiny_conv_onnx

    artifact = build(tiny_conv_onnx(tmp_path / "model.onnx", make_spec()), "ort-fp32", tmp_path)
    with load(artifact, mode="throughput", batch=1, threads=2) as streams:
        counted = Overlap(streams)
        tiles = tiles_for(streams, 5, seed=3)
        with DynamicBatcher(counted, max_batch=2, max_queue_ms=1) as batcher:
            time.sleep(0.2)  # both workers wait for requests
            both = batcher.submit_many(list(tiles[:2]))
            for f in both:
                f.result(timeout=5)
            assert batcher.stats().histogram == {1: 2} and counted.peak == 2
            batcher.reset_stats()
            busy = batcher.submit(tiles[2])
            time.sleep(0.01)  # one worker runs it (20 ms); the other is free
            rest = batcher.submit_many(list(tiles[3:]))
            outputs = [f.result(timeout=5) for f in [*both, busy, *rest]]
            assert batcher.stats().histogram == {1: 1, 2: 1}
        for i, out in enumerate(outputs):
            np.testing.assert_array_equal(out, streams.infer(tiles[i:i + 1])[0])


def test_the_device_batcher_batches_tensors_where_the_engine_runs(engine, tmp_path):
    """Torch tiles on a torch engine's device (the CPU here) batched there: each future holds its
    own tile's labels, reduced by ``postprocess`` on the device; host arrays and engines without
    device tensors are refused in one sentence."""
    torch = pytest.importorskip("torch", reason="torch is not installed: the device batcher is torch's")
    from tests.conftest import make_spec, tiny_conv_pt2

    with load(tiny_conv_pt2(tmp_path / "model.pt2", make_spec())) as eng:
        tiles = tiles_for(eng, 24, seed=3)
        want = eng.infer(tiles).argmax(1)
        on_device = torch.from_numpy(tiles).to(eng.device)
        with DeviceBatcher(eng, max_batch=4, max_queue_ms=5,
                           postprocess=lambda out: out.argmax(1).to(torch.uint8).cpu().numpy()) as batcher:
            futures = batcher.submit_many(list(on_device))
            for i, f in enumerate(futures):
                np.testing.assert_array_equal(f.result(timeout=30), want[i], err_msg=f"tile {i}")
            assert batcher.stats().mean_batch > 1
            with pytest.raises(InputError, match="device batcher takes one float32 tile"):
                batcher.submit(tiles[0])
    with pytest.raises(InputError, match="takes no tensors on its device"):
        DeviceBatcher(engine)
