"""The tiler's three stages: read -> infer -> blend and write, each with its own state.

A :class:`Reader` thread reads windows into the engine's batches, the calling
thread runs :class:`Inference`, a :class:`Writer` thread blends and writes.
They share only their two channels and the stop event; each keeps its own
counters and times, which the pipeline reads once the threads have ended.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from segbench.engines.base import Engine, infer_stream
from segbench.raster import LABEL_NODATA, LabelWriter, SceneInfo, inside, open_raster, read_window
from segbench.signals import raise_if_pending
from segbench.spec import ModelSpec
from segbench.tiler.accumulate import BandAccumulator
from segbench.tiler.channel import DONE, Channel, Stopped
from segbench.tiler.windows import Window

# The reader and writer threads run this much nicer than the engine: on a CPU engine
# every core is busy inferring, and a helper that preempts one of the engine's worker
# threads stalls the whole parallel step, so helpers take the cores when they idle.
HELPER_NICE = 10


@dataclass(frozen=True)
class Outputs:
    """The rasters one run writes: the labels, and optionally the confidence (the largest class
    probability) and the per-class probabilities."""

    labels: str | os.PathLike[str]
    confidence: str | os.PathLike[str] | None = None
    probabilities: str | os.PathLike[str] | None = None


class Reader:
    """Reads the windows in plan order into the engine's batches.

    Puts ``(entries, pixels)`` on ``inbox``: ``entries`` lists every window of the
    batch as ``(window, valid mask)``, with ``None`` for all-nodata windows,
    which take no slot in ``pixels``; then :data:`DONE`. With one thread
    (beside a CPU engine, which needs the cores) each window is read straight
    into its slot of the batch; with more (beside a GPU engine, which one
    thread of GDAL decoding cannot keep fed) a pool of threads, each with its
    own dataset, reads ahead and the windows are placed in plan order.
    """

    def __init__(self, scene: str | os.PathLike[str], windows: Sequence[Window], spec: ModelSpec,
                 batch: int, nodata: float | None, inbox: Channel, aoi: dict | None = None,
                 allocate: Callable[[tuple[int, ...]], np.ndarray] | None = None, threads: int = 1) -> None:
        self.scene, self.windows, self.spec, self.batch = scene, windows, spec, batch
        self.nodata, self.inbox = nodata, inbox
        self.aoi = aoi  # a GeoJSON geometry in the scene's CRS: pixels outside it are invalid
        #: makes each batch's float32 array (e.g. in pinned memory for a GPU); None: numpy's
        self.allocate = allocate
        self.threads = threads
        self.seconds = 0.0  # reading, summed over the reading threads
        self.skipped = 0

    def _new_batch(self) -> np.ndarray:
        tile = self.spec.tile
        shape = (self.batch, self.spec.num_bands, tile, tile)
        return self.allocate(shape) if self.allocate else np.empty(shape, np.float32)

    def _read(self, src, window: Window, out: np.ndarray) -> tuple[np.ndarray, float]:
        """Read ``window`` of ``src`` into ``out``: its validity mask, and the seconds it took."""
        t0 = time.perf_counter()
        tile = self.spec.tile
        _, valid = read_window(src, window.row, window.col, tile, tile, self.spec.bands,
                               nodata=self.nodata, out=out)
        if self.aoi is not None:
            valid &= inside(self.aoi, src.transform, window.row, window.col, tile, tile)
        return valid, time.perf_counter() - t0

    def run(self) -> None:
        reading = self._read_ahead() if self.threads > 1 else self._read_in_place()
        with reading as read:
            pending: list[tuple[Window, np.ndarray | None]] = []
            pixels, used = self._new_batch(), 0
            for window in self.windows:
                valid = read(window, pixels[used])
                if valid.any():
                    pending.append((window, valid))
                    used += 1
                else:
                    self.skipped += 1
                    pending.append((window, None))
                if used == self.batch:
                    self.inbox.put((pending, pixels))
                    pending, pixels, used = [], self._new_batch(), 0
            if pending:
                self.inbox.put((pending, pixels[:used]))
            self.inbox.put(DONE)

    @contextlib.contextmanager
    def _read_in_place(self) -> Iterator[Callable[[Window, np.ndarray], np.ndarray]]:
        """``read(window, out)``: each window read straight into its slot of the batch."""
        with open_raster(self.scene) as src:
            def read(window: Window, out: np.ndarray) -> np.ndarray:
                valid, seconds = self._read(src, window, out)
                self.seconds += seconds
                return valid

            yield read

    @contextlib.contextmanager
    def _read_ahead(self) -> Iterator[Callable[[Window, np.ndarray], np.ndarray]]:
        """``read(window, out)`` for the windows in plan order, read ahead by several threads and
        copied into the slot.

        Each thread has its own dataset (a GDAL dataset is used by one thread at a time) and
        reads one vertical strip of columns, so that the blocks two overlapping windows share
        are mostly decoded once, in that thread's block cache; all the threads read the same row
        of windows at a time, about a row of windows ahead of the batches.
        """
        local, opened, lock = threading.local(), [], threading.Lock()
        shape = (self.spec.num_bands, self.spec.tile, self.spec.tile)
        columns = sorted({w.col for w in self.windows})
        strip = {col: i * self.threads // len(columns) for i, col in enumerate(columns)}
        pools = [ThreadPoolExecutor(1, thread_name_prefix="segbench-read") for _ in range(self.threads)]

        def read_aside(window: Window) -> tuple[np.ndarray, np.ndarray, float]:
            with rasterio.Env():  # GDAL errors raise in this thread
                if getattr(local, "src", None) is None:
                    _lower_thread_priority(HELPER_NICE)
                    local.src = open_raster(self.scene)
                    with lock:
                        opened.append(local.src)
                out = np.empty(shape, np.float32)
                return out, *self._read(local.src, window, out)

        ahead: deque = deque()
        todo = iter(self.windows)

        def read(window: Window, out: np.ndarray) -> np.ndarray:
            while len(ahead) < len(columns) + self.threads and (w := next(todo, None)) is not None:
                ahead.append((w, pools[strip[w.col]].submit(read_aside, w)))
            planned, future = ahead.popleft()
            assert planned is window, "windows are read in plan order"
            pixels, valid, seconds = future.result()
            self.seconds += seconds
            out[...] = pixels
            return valid

        try:
            yield read
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)
            for src in opened:
                src.close()


class Inference:
    """The calling thread's stage: the batches through the engine's stream, then on to the writer.

    The engine's ``infer_stream`` may keep several batches in flight; it hands
    the outputs back in input order, and a FIFO pairs each with its batch's
    windows (batches of nodata windows only queue there without an inference),
    so the writer blends in plan order whatever the engine overlaps. Puts
    ``[(window, logits or None, valid or None), ...]`` per batch on ``outbox``,
    then :data:`DONE`.
    """

    def __init__(self, engine: Engine, inbox: Channel, outbox: Channel,
                 stream: Callable[[Engine, Iterator[np.ndarray]], Iterator] = infer_stream) -> None:
        self.engine, self.inbox, self.outbox = engine, inbox, outbox
        #: the engine's outputs for a stream of batches: host arrays (``infer_stream``) or
        #: device tensors (:func:`segbench.tiler.device.device_stream`)
        self.stream = stream
        self.seconds = 0.0  # in the engine, waiting for the reader excluded
        self.idle = 0.0  # waiting for the reader
        self.batches = 0

    def run(self, after_batch: Callable[[], None]) -> None:
        pending: deque[list] = deque()  # each batch's entries, in plan order, until its output
        outputs = self.stream(self.engine, self._feed(pending))
        try:
            while True:
                t0, idle0 = time.perf_counter(), self.idle
                output = next(outputs, None)
                self.seconds += time.perf_counter() - t0 - (self.idle - idle0)
                if output is None:
                    break
                self.batches += 1
                self._pass_on(pending, output, after_batch)
            self._pass_on(pending, None, after_batch)
            self.outbox.put(DONE)
        finally:
            close = getattr(outputs, "close", None)
            if close is not None:
                close()  # an engine with batches in flight waits for them

    def _feed(self, pending: deque) -> Iterator[np.ndarray]:
        """The reader's batches with pixels to infer; every batch's entries queue on ``pending``."""
        while True:
            t0 = time.perf_counter()
            item = self.inbox.get()
            self.idle += time.perf_counter() - t0
            if item is DONE:
                return
            entries, pixels = item
            pending.append(entries)
            if len(pixels):
                yield pixels

    def _pass_on(self, pending: deque, output, after_batch: Callable[[], None]) -> None:
        """Hand the writer the queued batches up to ``output``'s (None: all those left, nodata only)."""
        while pending:
            entries = pending.popleft()
            inferred = any(v is not None for _, v in entries)
            if inferred and output is None:
                raise RuntimeError(f"{self.engine.name}'s infer_stream ended before its last batch.")
            outs = iter(output if inferred else ())
            self.outbox.put([(w, None if v is None else next(outs), v) for w, v in entries])
            after_batch()
            raise_if_pending()
            if inferred:
                return


class Writer:
    """Blends each window into a :class:`BandAccumulator` and writes finished row bands.

    It owns the label (and confidence, probability) rasters: its thread opens them and, if
    anything fails or the pipeline stops, aborts them; after a whole scene it
    leaves them open and the pipeline, once this thread has ended, finishes
    them with :meth:`close` or drops them with :meth:`abort`. So a GDAL dataset
    is used by one thread at a time and never closed under a write.
    """

    def __init__(self, outbox: Channel, stop: threading.Event, info: SceneInfo, spec: ModelSpec,
                 weights: tuple[dict[int, np.ndarray], dict[int, np.ndarray]], outputs: Outputs,
                 threads: int, device: str | None = None, engine: str = "the engine") -> None:
        self.outbox, self.stop, self.info, self.spec = outbox, stop, info, spec
        self.engine = engine  # its name, for a sentence about its outputs
        #: the torch device to blend on (outputs arrive there as tensors); None: on the host
        self.device = device
        self.wy, self.wx = weights
        self.out, self.confidence, self.threads = Path(outputs.labels), outputs.confidence, threads
        self.probabilities = outputs.probabilities
        #: one writer per output, in the order of the bands a flush returns (None: not asked for)
        self.writers: list[LabelWriter | None] = []
        self.blend_seconds = 0.0
        self.write_seconds = 0.0
        self.done = 0  # windows blended

    def _open(self) -> None:
        open_outputs(self.writers, self.info, self.spec, self.out, self.confidence, self.probabilities)

    def run(self) -> None:
        try:
            self._open()
            self._blend_and_write()
        except BaseException:
            self.abort()
            raise

    def _accumulator(self):
        info, spec = self.info, self.spec
        if self.device is not None:
            from segbench.tiler.device import DeviceAccumulator

            return DeviceAccumulator(self.device, info.height, info.width, spec.num_classes, spec.tile,
                                     LABEL_NODATA, confidence=bool(self.confidence),
                                     probabilities=bool(self.probabilities), engine=self.engine)
        return BandAccumulator(info.height, info.width, spec.num_classes, spec.tile,
                               LABEL_NODATA, confidence=bool(self.confidence),
                               labels=spec.output == "labels", threads=self.threads,
                               probabilities=bool(self.probabilities), engine=self.engine)

    def _blend_and_write(self) -> None:
        acc = self._accumulator()
        while (item := self.outbox.get()) is not DONE:
            for window, output, valid in item:
                t0 = time.perf_counter()
                flushed = acc.flush(window.row) if window.row > acc.top else None
                if output is not None:
                    acc.add(window, output, self.wy[window.row], self.wx[window.col], valid)
                self.blend_seconds += time.perf_counter() - t0
                self._write(flushed)
                self.done += 1
        t0 = time.perf_counter()
        flushed = acc.finish()
        self.blend_seconds += time.perf_counter() - t0
        self._write(flushed)

    def _write(self, flushed) -> None:
        if flushed is None:
            return
        if self.stop.is_set():  # a write can be slow: none after the pipeline has stopped
            raise Stopped
        row0, *bands = flushed
        t0 = time.perf_counter()
        for writer, rows in zip(self.writers, bands, strict=True):
            if writer is not None:
                writer.write_rows(row0, rows)
        self.write_seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Finish the rasters as COGs under their final names; only once this stage's thread has ended."""
        t0 = time.perf_counter()
        with rasterio.Env():
            for writer in filter(None, self.writers):
                writer.close()
        self.write_seconds += time.perf_counter() - t0

    def abort(self) -> None:
        """Remove everything written (repeatable); from this stage's thread, or once it has ended."""
        for writer in filter(None, self.writers):
            writer.abort()


def open_outputs(writers: list, info: SceneInfo, spec: ModelSpec, out, confidence=None,
                 probabilities=None) -> list[LabelWriter | None]:
    """Append to ``writers`` the label, confidence and probability writers (None: not asked for),
    in the order of the bands a flush returns; appended one by one, so that an error opening one
    leaves those already open in ``writers`` to abort."""
    writers.append(LabelWriter(out, info, classes=spec.classes, palette=spec.palette))
    writers.append(LabelWriter(confidence, info, nodata=0, description="confidence",
                               resampling="average") if confidence else None)
    writers.append(LabelWriter(probabilities, info, nodata=LABEL_NODATA, descriptions=spec.classes,
                               resampling="average") if probabilities else None)
    return writers


class StageThread(threading.Thread):
    """A helper stage's thread: nicer than the engine, GDAL errors raised, its error kept.

    A failure sets ``stop``, so every other stage gives up; :class:`Stopped` is
    how a stage gives up, and is no error.
    """

    def __init__(self, name: str, work: Callable[[], None], stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.work, self.stop = work, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        _lower_thread_priority(HELPER_NICE)
        try:
            with rasterio.Env():  # GDAL errors raise here instead of printing from the thread
                self.work()
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001  (handed to the pipeline)
            self.error = exc
            self.stop.set()


def _lower_thread_priority(increment: int) -> None:
    """Make the calling thread ``increment`` nicer (Linux schedules threads individually)."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + increment, 19))
