"""Segment whole scenes: read -> infer -> blend -> write, overlapped in threads.

A reader thread reads windows in plan order (rasterio windowed reads, the
nodata value or internal mask giving a validity mask, windows with no valid
pixel skipped) and batches them; the calling thread runs the engine; a
writer thread blends each window into a :class:`BandAccumulator` and writes
finished row bands to the label raster. Bounded queues join the stages, so
memory stays bounded and reading and writing overlap inference. Any error,
or Ctrl-C, stops every stage within a fraction of a second and removes the
partial outputs: nothing is left under the final name.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
import rasterio

from segbench.engines.base import Engine
from segbench.errors import InputError
from segbench.raster import (
    LABEL_BLOCK,
    LABEL_NODATA,
    LabelWriter,
    check_bands,
    open_raster,
    read_window,
    scene_info,
)
from segbench.tiler.accumulate import BandAccumulator
from segbench.tiler.blend import axis_weights
from segbench.tiler.windows import Window, axis_starts, stride_for

QUEUE_DEPTH = 3
POLL_S = 0.1
# The reader and writer threads run this much nicer than the engine: on a CPU engine
# every core is busy inferring, and a helper that preempts one of the engine's worker
# threads stalls the whole parallel step, so helpers take the cores when they idle.
HELPER_NICE = 10
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt")


@dataclass
class StageTimes:
    """Seconds spent in each stage; ``idle`` is the inference thread waiting for input."""

    read: float = 0.0
    infer: float = 0.0
    blend: float = 0.0
    write: float = 0.0
    idle: float = 0.0


@dataclass(frozen=True)
class SegmentResult:
    """What one scene cost: windows, time per stage, throughput."""

    scene: str
    output: str
    confidence: str | None
    width: int
    height: int
    windows: int
    skipped: int
    batches: int
    seconds: float
    stages: StageTimes = field(default_factory=StageTimes)
    peak_rss_bytes: int = 0

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def megapixels_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["megapixels"] = self.megapixels
        d["megapixels_per_s"] = self.megapixels_per_s
        return d


class _Stop(Exception):
    """Raised inside a stage when another stage has failed or the user interrupted."""


class _Channel:
    """A bounded queue whose blocking calls give up when the shared stop event is set."""

    def __init__(self, stop: threading.Event) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._stop = stop

    def put(self, item) -> None:
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                self._q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def get(self):
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                return self._q.get(timeout=POLL_S)
            except queue.Empty:
                continue


_DONE = object()


def segment(
    scene: str | os.PathLike[str],
    engine: Engine,
    out: str | os.PathLike[str],
    *,
    overlap: int | None = None,
    stride: int | None = None,
    blend: str = "cosine",
    batch: int = 4,
    nodata: float | None = None,
    confidence: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> SegmentResult:
    """Segment ``scene`` with ``engine`` into a label COG at ``out``.

    ``overlap`` (or ``stride``) sets the window spacing, default a quarter
    tile of overlap; ``blend`` is ``mean``, ``cosine`` or ``crop``; ``nodata``
    overrides the scene's nodata value; ``confidence`` is an optional second
    output with the max class probability as uint8 (0..255).
    """
    spec = engine.spec
    tile = spec.tile
    step = stride_for(tile, overlap, stride)
    labels_out = spec.output == "labels"
    if labels_out and blend != "crop":
        raise InputError("This engine outputs labels, which only --blend crop can combine.")
    if labels_out and confidence:
        raise InputError("This engine outputs labels, so it cannot give a confidence raster.")
    if batch < 1:
        raise InputError("The batch size must be at least 1.")
    with open_raster(scene) as ds:
        info = scene_info(ds)
    check_bands(info, spec)
    if info.crs is None:
        warnings.warn(f"{info.path.name} has no CRS; its labels will have none either.",
                      stacklevel=2)
    with rasterio.Env(GDAL_CACHEMAX=_cache_bytes(info, tile)):
        return _run(scene, engine, out, info, tile, step, blend, batch, nodata, confidence,
                    progress)


def _cache_bytes(info, tile: int) -> int:
    """GDAL's block cache, bounded by the rows in flight rather than 5% of the machine's RAM.

    Enough for the input blocks under one row of windows (a tile's height plus one
    block of misalignment, so the next row of windows finds its overlap cached) and
    the label blocks still being filled; GDAL's default would otherwise let the cache
    grow with the scene's area.
    """
    itemsize = np.dtype(info.dtype).itemsize
    block_rows = min(info.block_height, info.height)
    need = ((tile + block_rows) * info.width * info.count * itemsize
            + (tile + LABEL_BLOCK) * info.width + (32 << 20))
    return int(min(max(need, 64 << 20), 1 << 30))


def _run(scene, engine: Engine, out, info, tile: int, step: int, blend: str, batch: int,
         nodata, confidence, progress: bool) -> SegmentResult:
    """The threaded read -> infer -> blend -> write pipeline of :func:`segment`."""
    spec = engine.spec
    labels_out = spec.output == "labels"
    rows, cols = axis_starts(info.height, tile, step), axis_starts(info.width, tile, step)
    wy = dict(zip(rows, axis_weights(rows, tile, info.height, blend), strict=True))
    wx = dict(zip(cols, axis_weights(cols, tile, info.width, blend), strict=True))
    windows = [Window(r, c, tile, tile) for r in rows for c in cols]

    stop = threading.Event()
    inbox, outbox = _Channel(stop), _Channel(stop)
    times = StageTimes()
    errors: list[BaseException] = []
    counts = {"skipped": 0, "batches": 0, "done": 0}
    writers = [LabelWriter(out, info, classes=spec.classes, palette=spec.palette)]
    if confidence:
        writers.append(LabelWriter(confidence, info, nodata=0, description="confidence",
                                   resampling="average"))

    def guarded(fn):
        def run() -> None:
            _lower_thread_priority(HELPER_NICE)
            try:
                with rasterio.Env():  # GDAL errors raise here instead of printing from the thread
                    fn()
            except _Stop:
                pass
            except BaseException as exc:  # noqa: BLE001  (handed to the caller)
                errors.append(exc)
                stop.set()
        return run

    def reader() -> None:
        # Windows are read straight into the batch the engine will take, so the
        # inference thread never copies pixels; all-nodata windows take no slot.
        def new_batch() -> np.ndarray:
            return np.empty((batch, spec.num_bands, tile, tile), np.float32)

        with open_raster(scene) as src:
            pending: list[tuple[Window, np.ndarray | None]] = []  # (window, valid or None)
            pixels, used = new_batch(), 0
            for window in windows:
                t0 = time.perf_counter()
                _, valid = read_window(src, window.row, window.col, tile, tile, spec.bands,
                                       nodata=nodata, out=pixels[used])
                times.read += time.perf_counter() - t0
                if valid.any():
                    pending.append((window, valid))
                    used += 1
                else:
                    counts["skipped"] += 1
                    pending.append((window, None))
                if used == batch:
                    inbox.put((pending, pixels))
                    pending, pixels, used = [], new_batch(), 0
            if pending:
                inbox.put((pending, pixels[:used]))
            inbox.put(_DONE)

    def writer() -> None:
        acc = BandAccumulator(info.height, info.width, spec.num_classes, tile, LABEL_NODATA,
                              confidence=bool(confidence), labels=labels_out,
                              threads=_blend_threads(engine))

        def emit(flushed) -> None:
            if flushed is None:
                return
            row0, labels, conf = flushed
            t0 = time.perf_counter()
            writers[0].write_rows(row0, labels)
            if confidence:
                writers[1].write_rows(row0, conf)
            times.write += time.perf_counter() - t0

        while (item := outbox.get()) is not _DONE:
            for window, output, valid in item:
                t0 = time.perf_counter()
                flushed = acc.flush(window.row) if window.row > acc.top else None
                if output is not None:
                    acc.add(window, output, wy[window.row], wx[window.col], valid)
                times.blend += time.perf_counter() - t0
                emit(flushed)
                counts["done"] += 1
        t0 = time.perf_counter()
        flushed = acc.finish()
        times.blend += time.perf_counter() - t0
        emit(flushed)

    threads = [threading.Thread(target=guarded(reader), name="segbench-read", daemon=True),
               threading.Thread(target=guarded(writer), name="segbench-write", daemon=True)]
    bar = _Progress(len(windows), info, enabled=progress)
    start = time.perf_counter()
    process = psutil.Process()
    peak = process.memory_info().rss
    try:
        for t in threads:
            t.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = inbox.get()
                times.idle += time.perf_counter() - t0
                if item is _DONE:
                    outbox.put(_DONE)
                    break
                entries, pixels = item
                outputs: list = []
                if len(pixels):
                    t0 = time.perf_counter()
                    outputs = list(engine.infer(pixels))
                    times.infer += time.perf_counter() - t0
                    counts["batches"] += 1
                it = iter(outputs)
                outbox.put([(w, None if v is None else next(it), v) for w, v in entries])
                peak = max(peak, process.memory_info().rss)
                bar.update(counts["done"], peak)
        except _Stop:
            pass
        for t in threads:
            while t.is_alive():
                t.join(POLL_S)
        if errors:
            raise errors[0]
        t0 = time.perf_counter()
        with rasterio.Env():
            for w in writers:
                w.close()
        times.write += time.perf_counter() - t0
    except BaseException:
        stop.set()
        for t in threads:
            t.join(2.0)
        for w in writers:
            w.abort()
        raise
    finally:
        bar.close()
    return SegmentResult(
        scene=str(scene), output=str(out), confidence=str(confidence) if confidence else None,
        width=info.width, height=info.height, windows=len(windows), skipped=counts["skipped"],
        batches=counts["batches"], seconds=time.perf_counter() - start, stages=times,
        peak_rss_bytes=peak,
    )


def _blend_threads(engine: Engine) -> int:
    """Threads for the native blending loops: one beside a CPU engine, every core otherwise.

    A CPU engine keeps every core busy; a parallel blend there finds no idle core
    and adds OpenMP's spin-waiting to the engine's load (measured while both cores
    were busy: 6.6 ms of CPU per 512^2 window with two threads, 1.4 ms with one).
    Beside a GPU engine the cores are free, and the blend may be what limits the
    pipeline.
    """
    return 1 if engine.device == "cpu" else 0


def _lower_thread_priority(increment: int) -> None:
    """Make the calling thread ``increment`` nicer (Linux schedules threads individually)."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + increment, 19))


def expand_scenes(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Scene files from files and folders (``*.tif``, ``*.tiff``, ``*.vrt`` inside folders)."""
    scenes: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in SCENE_SUFFIXES)
            if not found:
                raise InputError(f"Folder {p} holds no .tif, .tiff or .vrt scenes.")
            scenes.extend(found)
        else:
            scenes.append(p)
    return scenes


def segment_many(
    paths: Sequence[str | os.PathLike[str]],
    engine: Engine,
    out: str | os.PathLike[str],
    *,
    confidence: bool = False,
    progress: bool = True,
    **options,
) -> list[SegmentResult]:
    """Segment several scenes (files, folders, VRTs).

    ``out`` is the label file when there is one scene and it ends in .tif;
    otherwise a folder that receives ``<scene>.labels.tif`` per scene.
    """
    scenes = expand_scenes(paths)
    out = Path(out)
    single = len(scenes) == 1 and out.suffix.lower() in (".tif", ".tiff")
    if not single:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for scene in scenes:
        dest = out if single else out / f"{scene.stem}.labels.tif"
        conf = dest.with_name(f"{dest.stem}.confidence.tif") if confidence else None
        results.append(segment(scene, engine, dest, confidence=conf, progress=progress, **options))
    return results


class _Progress:
    """Windows done, MP/s, ETA and the memory high-water mark, on a rich bar."""

    def __init__(self, total: int, info, enabled: bool) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.mp_per_window = info.width * info.height / 1e6 / max(total, 1)
        self.bar = Progress(
            TextColumn(f"{info.path.name}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[mem]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("segment", total=total, rate="", mem="")

    def update(self, done: int, peak: int) -> None:
        if self.bar is None:
            return
        speed = self.bar.tasks[0].speed
        rate = f"{speed * self.mp_per_window:.2f} MP/s" if speed else ""
        self.bar.update(self.task, completed=done, rate=rate, mem=f"peak {peak / 2**20:.0f} MiB")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
