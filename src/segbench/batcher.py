"""The dynamic batcher: concurrent single-tile requests gathered into engine batches.

A serving primitive beside the engines (it depends on :mod:`segbench.engines`
only): the bench's LoadGen system under test and the HTTP service use this one,
so the bench's Server figure is the service's. ``submit(tile)`` returns a
:class:`concurrent.futures.Future` of that tile's own output; one worker thread
gathers the waiting requests into a batch and runs the engine on it (one worker per
call the engine may run at once, its ``inflight``: OpenVINO's throughput streams)::

    with DynamicBatcher(engine, max_queue_ms=2) as batcher:
        logits = batcher.submit(tile).result()            # threads
        logits = await asyncio.wrap_future(batcher.submit(tile))  # asyncio

``asyncio.wrap_future`` works because the futures are plain
``concurrent.futures`` ones (their callbacks run in the worker thread; asyncio
hands the result to its loop thread-safely), and cancelling the asyncio future
cancels a request that has not started.

Gathering: a batch goes to the engine when it is full (``max_batch``, at most the
engine's own ``max_batch``) or when its oldest request has waited ``max_queue_ms``,
whichever comes first. While the engine runs, new requests queue; when it is
done, a full or overdue queue goes at once, so under load batches grow by
themselves and the delay is only paid at low load. With several workers a
batch goes to whichever worker is free, so no stream idles while requests wait
(measured with benchmarks/bench_scenarios.py: one worker before a two-stream
OpenVINO engine reached about half its Offline rate under Server load), and
the waiting requests are shared among the free workers: two requests and two
free one-thread ONNX Runtime streams run a tile each side by side, not both
on one stream, one after the other, while the other idles. Each
worker stacks tiles into its own preallocated buffer (a lone contiguous tile is
passed as a view, no copy).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segbench.engines.base import Engine
from segbench.errors import EngineError, InputError

#: the most tiles per batch where neither the caller nor the engine says
DEFAULT_MAX_BATCH = 8
#: how long the oldest request may wait for others, by default (ms)
DEFAULT_MAX_QUEUE_MS = 2.0


class BatcherClosedError(EngineError):
    """The batcher was closed before the request ran."""


@dataclass(frozen=True)
class BatcherStats:
    """What a batcher formed since it started (or since :meth:`DynamicBatcher.reset_stats`).

    ``histogram`` maps a batch size to how many batches had it; ``max_queue_depth``
    is the most requests ever waiting at once; ``mean_queue_depth`` the mean
    number waiting when a batch was taken.
    """

    requests: int = 0
    batches: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    max_queue_depth: int = 0
    mean_queue_depth: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.requests / self.batches if self.batches else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "batches": self.batches,
                "histogram": {str(k): v for k, v in sorted(self.histogram.items())},
                "max_queue_depth": self.max_queue_depth, "mean_queue_depth": self.mean_queue_depth}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatcherStats:
        return cls(int(data["requests"]), int(data["batches"]),
                   {int(k): int(v) for k, v in data["histogram"].items()},
                   int(data["max_queue_depth"]), float(data["mean_queue_depth"]))


class _Request:
    __slots__ = ("tile", "future", "arrived")

    def __init__(self, tile: np.ndarray, future: Future, arrived: float) -> None:
        self.tile, self.future, self.arrived = tile, future, arrived


class DynamicBatcher:
    """Thread-safe: any thread may ``submit``; ``workers`` threads run ``engine``.

    ``max_batch``: the most tiles per engine call (default the engine's
    ``max_batch``, else :data:`DEFAULT_MAX_BATCH`; never more than the engine
    takes; it may be lowered while running, never raised). ``max_queue_ms``:
    the longest the oldest request waits for a fuller batch. ``postprocess``:
    applied to each batch's output in the worker (e.g. ``lambda out:
    out.argmax(1).astype(np.uint8)``), so each future gets its row of the result.
    ``workers``: engine calls at once (default and most: the engine's ``inflight``,
    the threads its contract lets call ``infer`` together).
    A future's result is a view on its batch's output. The batcher does not own
    the engine: closing one leaves the other open.
    """

    def __init__(self, engine: Engine, max_batch: int | None = None,
                 max_queue_ms: float = DEFAULT_MAX_QUEUE_MS, postprocess=None,
                 workers: int | None = None) -> None:
        limit = getattr(engine, "max_batch", None)
        inflight = max(1, int(getattr(engine, "inflight", 1)))
        if max_batch is not None and max_batch < 1:
            raise InputError(f"The batcher's max_batch must be at least 1, not {max_batch}.")
        if max_queue_ms < 0:
            raise InputError(f"The batcher's max_queue_ms must be 0 or more, not {max_queue_ms}.")
        if workers is not None and not 1 <= workers <= inflight:
            raise InputError(f"{engine.name} runs at most {inflight} call(s) at once: the batcher's "
                             f"workers must be 1 to {inflight}, not {workers}.")
        want = max_batch or limit or DEFAULT_MAX_BATCH
        self.engine = engine
        self.max_batch: int = min(want, limit) if limit else want
        self.max_queue_ms = float(max_queue_ms)
        self.postprocess = postprocess
        spec = engine.spec
        self.tile_shape = (spec.num_bands, spec.tile, spec.tile)
        self._delay = self.max_queue_ms / 1000.0
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._idle = 0  # workers waiting in _take for requests
        self.reset_stats()
        self._workers = [threading.Thread(target=self._run, name=f"batcher-{engine.name}-{i}", daemon=True)
                         for i in range(workers or inflight)]
        for worker in self._workers:
            worker.start()

    @property
    def workers(self) -> int:
        """The threads that run the engine."""
        return len(self._workers)

    # -- requests ----------------------------------------------------------
    def submit(self, tile: np.ndarray) -> Future:
        """Queue one tile ``(bands, tile, tile)`` float32; the future of its own output."""
        return self.submit_many([tile])[0]

    def submit_many(self, tiles) -> list[Future]:
        """Queue several tiles at once (one lock); their futures, in order."""
        checked = [self._check(t) for t in tiles]
        now = time.perf_counter()
        futures = [Future() for _ in checked]
        with self._cond:
            if self._closed:
                raise BatcherClosedError(f"The batcher of {self.engine.name} is closed; "
                                         "make a new one to submit tiles.")
            self._queue.extend(_Request(t, f, now) for t, f in zip(checked, futures, strict=True))
            self._depth_max = max(self._depth_max, len(self._queue))
            self._cond.notify()
        return futures

    def _check(self, tile: Any) -> np.ndarray:
        if not isinstance(tile, np.ndarray) or tile.shape != self.tile_shape:
            got = tile.shape if isinstance(tile, np.ndarray) else type(tile).__name__
            raise InputError(f"{self.engine.name}'s batcher takes one tile of shape {self.tile_shape}, "
                             f"not {got}.")
        return tile if tile.dtype == np.float32 else tile.astype(np.float32)

    @property
    def queue_depth(self) -> int:
        """Requests waiting now (not counting the batches the engine runs)."""
        return len(self._queue)

    # -- statistics --------------------------------------------------------
    def stats(self) -> BatcherStats:
        """The batch sizes formed and the queue depths seen, so far."""
        with self._cond:
            batches = sum(self._sizes.values())
            return BatcherStats(sum(k * v for k, v in self._sizes.items()), batches, dict(self._sizes),
                                self._depth_max, self._depth_sum / batches if batches else 0.0)

    def reset_stats(self) -> None:
        """Start counting afresh (e.g. between the points of a search)."""
        with self._cond:
            self._sizes: Counter[int] = Counter()
            self._depth_max = 0
            self._depth_sum = 0

    # -- the worker ----------------------------------------------------------
    def _take(self) -> list[_Request] | None:
        """The next batch, once full or overdue; None once closed. The waiting requests are shared
        among the workers free to run them, so no stream idles while another runs two tiles."""
        with self._cond:
            self._idle += 1
            try:
                while True:
                    if self._closed:
                        return None
                    if len(self._queue) >= self.max_batch:
                        break
                    if self._queue:
                        wait = self._queue[0].arrived + self._delay - time.perf_counter()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                depth = len(self._queue)
                n = min(depth, self.max_batch, -(-depth // self._idle))
            finally:
                self._idle -= 1
            batch = [self._queue.popleft() for _ in range(n)]
            self._depth_sum += depth
            if self._queue:  # the rest is another worker's
                self._cond.notify()
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]  # drop cancelled ones
        with self._cond:
            if live:
                self._sizes[len(live)] += 1
        return live

    def _run(self) -> None:
        buffer = self._new_buffer()
        try:
            while (batch := self._take()) is not None:
                if batch:
                    self._run_batch(batch, buffer)
        finally:  # closed, or the worker itself failed: no request is left waiting forever
            with self._cond:
                self._closed = True
            self._fail_pending()

    # -- what a tile is (host arrays here, device tensors in DeviceBatcher) ----------------------
    def _new_buffer(self) -> np.ndarray:
        """A worker's buffer of ``max_batch`` tiles."""
        return np.empty((self.max_batch, *self.tile_shape), np.float32)

    def _stack(self, batch: list[_Request], buffer: np.ndarray) -> np.ndarray:
        """The batch's tiles as one contiguous array: a lone tile's view, else the worker's buffer."""
        if len(batch) == 1 and batch[0].tile.flags.c_contiguous:
            return batch[0].tile[np.newaxis]
        out = buffer[: len(batch)]
        np.stack([r.tile for r in batch], out=out)
        return out

    def _infer(self, tiles: np.ndarray, buffer: np.ndarray) -> np.ndarray:
        """The engine's output for ``tiles``, never a view on the worker's buffer."""
        out = self.engine.infer(tiles)
        return out.copy() if np.may_share_memory(out, buffer) else out  # an engine echoing its input

    def _run_batch(self, batch: list[_Request], buffer: np.ndarray) -> None:
        try:
            out = self._infer(self._stack(batch, buffer), buffer)
            if self.postprocess is not None:
                out = self.postprocess(out)
            if len(out) != len(batch):
                raise EngineError(f"{self.engine.name} returned {len(out)} outputs for {len(batch)} tiles.")
        except BaseException as exc:  # noqa: BLE001  (handed to each request of the batch)
            for r in batch:
                r.future.set_exception(exc)
            return
        for i, r in enumerate(batch):
            r.future.set_result(out[i])

    def _fail_pending(self) -> None:
        with self._cond:
            pending = list(self._queue)
            self._queue.clear()
        for r in pending:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(BatcherClosedError(
                    f"The batcher of {self.engine.name} was closed before this tile ran."))

    # -- lifecycle -------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        """Stop: the batches running finish, every request still queued fails with
        :class:`BatcherClosedError`. Idempotent; the engine stays open."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DeviceBatcher(DynamicBatcher):
    """The batcher for tiles already on the engine's device (torch tensors there, of an engine with
    ``device_tensors``): batches are stacked on the device and run with ``infer_tensor``, so no tile
    goes to the host and back; ``postprocess`` gets the batch's output tensor there (reduce it on
    the device, e.g. to labels, before anything comes back). On a GPU that keeps the host's work per
    tile to the labels' copy: an argmax of logits on the host would cost more than the engine.
    """

    def __init__(self, engine: Engine, *args, **kwargs) -> None:
        if not getattr(engine, "device_tensors", False):
            raise InputError(f"{engine.name} takes no tensors on its device; use DynamicBatcher.")
        from segbench.extras import require

        self._torch = require("torch", "the device batcher")
        super().__init__(engine, *args, **kwargs)

    def _check(self, tile: Any):
        torch = self._torch
        if not isinstance(tile, torch.Tensor) or tuple(tile.shape) != self.tile_shape \
                or tile.dtype != torch.float32 or tile.device.type != torch.device(self.engine.device).type:
            got = f"{tile.dtype} {tuple(tile.shape)} on {tile.device}" if isinstance(tile, torch.Tensor) \
                else type(tile).__name__
            raise InputError(f"{self.engine.name}'s device batcher takes one float32 tile of shape "
                             f"{self.tile_shape} on {self.engine.device}, not {got}.")
        return tile

    def _new_buffer(self):
        return self._torch.empty((self.max_batch, *self.tile_shape), dtype=self._torch.float32,
                                 device=self.engine.device)

    def _stack(self, batch: list[_Request], buffer):
        if len(batch) == 1 and batch[0].tile.is_contiguous():
            return batch[0].tile.unsqueeze(0)
        return self._torch.stack([r.tile for r in batch], out=buffer[: len(batch)])

    def _infer(self, tiles, buffer):
        return self.engine.infer_tensor(tiles)  # a new tensor (queued on the device's current stream)
