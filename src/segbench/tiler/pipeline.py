"""Segment whole scenes: read -> infer -> blend -> write, overlapped in threads.

A reader thread reads windows in plan order (rasterio windowed reads, the
nodata value or internal mask giving a validity mask, windows with no valid
pixel skipped) and batches them; the calling thread feeds them to the engine's
``infer_stream`` (several batches in flight where the engine can, e.g.
OpenVINO loaded with ``mode="throughput"``; outputs always in plan order); a
writer thread blends each window into a :class:`BandAccumulator` and writes
finished row bands to the label raster (the stages: :mod:`.stages`). Bounded
queues join the stages, so memory stays bounded and reading and writing
overlap inference. For an engine on a GPU the blend and the argmax run on
its device and only uint8 rows come back (:mod:`.device`). Any error,
Ctrl-C, SIGTERM or SIGHUP stops every stage within a fraction of a second
and removes the partial outputs: nothing is left under the final name.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import psutil
import rasterio

from segbench.engines.base import Engine, check_batch, infer_stream
from segbench.errors import InputError
from segbench.files import check_output
from segbench.peak import peak_rss_bytes
from segbench.protect import Inputs
from segbench.raster import LABEL_BLOCK, AreaOfInterest, SceneInfo, check_bands, open_raster, scene_info
from segbench.signals import terminate_as_interrupt
from segbench.spec import ModelSpec
from segbench.tiler.blend import axis_weights
from segbench.tiler.channel import POLL_S, QUEUE_DEPTH, Channel, Stopped
from segbench.tiler.device import device_stream, host_batches, runs_on_device
from segbench.tiler.fit import check_crs, check_gsd, check_pixels
from segbench.tiler.progress import Progress
from segbench.tiler.stages import Inference, Outputs, Reader, StageThread, Writer
from segbench.tiler.windows import Window, axis_starts, stride_for

#: classes a uint8 label raster holds besides its nodata value (255)
MAX_CLASSES = 255
# How long an aborting pipeline waits for its helper threads to end (each stops at its next
# window or row band); one still running after that is left to remove its own temporaries.
ABORT_WAIT_S = 30.0


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
    probabilities: str | None = None
    # The process's resident-memory high-water mark when the scene was done (the kernel's
    # VmHWM, so no spike is missed): since the process started or since the caller last
    # called segbench.peak.reset_peak, never reset here, so it includes what came before
    # the scene (loading the engine) and a caller measuring a whole process keeps its peak.
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
    aoi: AreaOfInterest | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    on_device: bool | None = None,
    read_threads: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SegmentResult:
    """Segment ``scene`` with ``engine`` into a label COG at ``out``.

    ``overlap`` (or ``stride``) sets the window spacing, default the stride
    the model was evaluated with (``spec.stride``, e.g. an imported mmseg
    config's slide ``test_cfg``), else a quarter tile of overlap; ``blend``
    is ``mean``, ``cosine`` or ``crop``; ``nodata`` overrides the scene's
    nodata value; ``confidence`` is an optional second output with the max
    class probability as uint8 (0..255); ``aoi`` limits the run to an area of
    interest (windows outside it are not run, pixels outside it are nodata);
    ``probabilities`` is an optional output with one band per class, the
    softmax of the blended logits as uint8 ``round(254 p)`` (255: nodata).
    ``on_device`` blends on the engine's device (:mod:`.device`): by default
    for an engine off the CPU that returns device tensors. ``read_threads``
    read ahead in parallel; by default one beside a CPU engine and several
    beside a GPU engine (:func:`_read_threads`). ``on_progress(done, total)``
    is called in the calling thread after each batch with the windows blended
    so far; an exception it raises stops the run as any error does (a caller's
    cancel). Called from the main thread,
    SIGTERM and SIGHUP (at their default action) stop it as Ctrl-C does:
    partial outputs removed, then :class:`~segbench.signals.Terminated`.
    """
    spec = engine.spec
    tile = spec.tile
    step = stride_for(tile, overlap, stride, default=spec.stride)
    labels_out = spec.output == "labels"
    if labels_out and blend != "crop":
        raise InputError("This engine outputs labels, which only --blend crop can combine.")
    if labels_out and (confidence or probabilities):
        raise InputError("This engine outputs labels, so it cannot give confidence or probability rasters.")
    if batch < 1:
        raise InputError("The batch size must be at least 1.")
    check_batch(batch, engine.name, engine.max_batch)
    if not labels_out and not 1 <= spec.num_classes <= MAX_CLASSES:
        raise InputError(f"{engine.name} predicts {spec.num_classes} classes; label rasters are uint8 "
                         f"with 255 for nodata, so segment takes 1 to {MAX_CLASSES} classes.")
    with open_raster(scene) as ds:
        info = scene_info(ds)
    check_bands(info, spec)
    batch = bounded_batch(batch, info, spec, step, engine.name)
    area = aoi.for_scene(info) if aoi is not None else None
    check_crs(info)
    check_gsd(info, spec)
    _check_outputs(out, confidence, probabilities)
    Inputs().add_raster(scene).refuse([out, confidence, probabilities])
    with open_raster(scene) as ds:  # a few blocks (an overview, or the first windows)
        check_pixels(ds, info, spec, nodata)
    run = RunPlan(scene=scene, info=info, outputs=Outputs(out, confidence, probabilities), tile=tile,
                  step=step, blend=blend, batch=batch, nodata=nodata, aoi=area,
                  on_device=runs_on_device(engine, on_device),
                  read_threads=read_threads or _read_threads(engine))
    with terminate_as_interrupt(), rasterio.Env(GDAL_CACHEMAX=_cache_bytes(info, tile)):
        return _run(run, engine, progress, on_progress)


def batch_bytes(batch: int, spec: ModelSpec) -> int:
    """The host memory the batches in flight take: each batch's float32 input and output, for the
    batches queued between the stages (read ahead, being run, waiting to be blended)."""
    per_tile = (spec.num_bands + max(spec.num_classes, 1)) * spec.tile * spec.tile * 4
    return batch * per_tile * (QUEUE_DEPTH + 2)


def bounded_batch(batch: int, info, spec: ModelSpec, step: int, engine: str) -> int:
    """``batch`` cut to the scene's windows; refused in one sentence, naming the largest that fits,
    when its buffers would not fit in the memory available now (the engine's own memory on top,
    which the batch sweep measures, is not counted: the bound is the least it needs)."""
    windows = len(axis_starts(info.height, spec.tile, step)) * len(axis_starts(info.width, spec.tile, step))
    batch = min(batch, windows)
    available = psutil.virtual_memory().available
    if batch_bytes(batch, spec) > available:
        fits = available // batch_bytes(1, spec)
        what = f"give --batch {fits} or less" if fits else "this model's tiles need a larger machine"
        raise InputError(f"A batch of {batch} tiles needs {batch_bytes(batch, spec) / 2**30:.1f} GiB for "
                         f"{engine}'s input and output buffers, more than the {available / 2**30:.1f} GiB "
                         f"available; {what}.")
    return batch


def _check_outputs(*outputs) -> None:
    """Fail before any work, and before any file is created, for outputs that cannot be written."""
    for dest in filter(None, outputs):
        check_output(dest)


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


@dataclass(frozen=True)
class RunPlan:
    """What one run of :func:`segment` does, decided before it starts: the scene and its outputs,
    the window grid (``tile`` every ``step`` pixels), how windows are blended and batched, the
    pixels that count (``nodata``, ``aoi``) and where the work runs."""

    scene: str | os.PathLike[str]
    info: SceneInfo
    outputs: Outputs
    tile: int
    step: int
    blend: str
    batch: int
    nodata: float | None
    aoi: dict | None  # a GeoJSON geometry in the scene's CRS
    on_device: bool  # blend on the engine's device
    read_threads: int

    def windows(self) -> tuple[list[Window], tuple[dict[int, np.ndarray], dict[int, np.ndarray]]]:
        """The windows, row-major, and the blending weights of their rows and columns."""
        info, tile = self.info, self.tile
        rows, cols = axis_starts(info.height, tile, self.step), axis_starts(info.width, tile, self.step)
        wy = dict(zip(rows, axis_weights(rows, tile, info.height, self.blend), strict=True))
        wx = dict(zip(cols, axis_weights(cols, tile, info.width, self.blend), strict=True))
        return [Window(r, c, tile, tile) for r in rows for c in cols], (wy, wx)


def _run(run: RunPlan, engine: Engine, progress: bool,
         on_progress: Callable[[int, int], None] | None = None) -> SegmentResult:
    """Run the three stages of :func:`segment`; on any error or interrupt, stop them and clean up."""
    info, out = run.info, run.outputs
    windows, weights = run.windows()
    stop = threading.Event()
    inbox, outbox = Channel(stop), Channel(stop)
    device = engine.device if run.on_device else None
    reader = Reader(run.scene, windows, engine.spec, run.batch, run.nodata, inbox, run.aoi,
                    allocate=host_batches(device) if device else None, threads=run.read_threads)
    inference = Inference(engine, inbox, outbox, stream=device_stream if device else infer_stream)
    writer = Writer(outbox, stop, info, engine.spec, weights, out, threads=_blend_threads(engine),
                    device=device, engine=engine.name)
    threads = [StageThread("segbench-read", reader.run, stop),
               StageThread("segbench-write", writer.run, stop)]
    bar = Progress(len(windows), info.path.name, info.width * info.height / 1e6, enabled=progress)
    start = time.perf_counter()

    def after_batch() -> None:
        bar.update(writer.done)
        if on_progress is not None:
            on_progress(writer.done, len(windows))

    try:
        for t in threads:
            t.start()
        try:
            inference.run(after_batch=after_batch)
        except Stopped:
            pass
        _join(threads)
        for t in threads:
            if t.error is not None:
                raise t.error
        if on_progress is not None:  # every window blended; a cancel here still leaves nothing
            on_progress(len(windows), len(windows))
        writer.close()  # the writer's thread has ended: its rasters are this thread's now
    except BaseException:
        stop.set()
        if _join(threads, ABORT_WAIT_S):
            writer.abort()
        raise
    finally:
        bar.close()
    times = StageTimes(read=reader.seconds, infer=inference.seconds, blend=writer.blend_seconds,
                       write=writer.write_seconds, idle=inference.idle)
    return SegmentResult(
        scene=str(run.scene), output=str(out.labels),
        confidence=str(out.confidence) if out.confidence else None,
        probabilities=str(out.probabilities) if out.probabilities else None,
        width=info.width, height=info.height, windows=len(windows), skipped=reader.skipped,
        batches=inference.batches, seconds=time.perf_counter() - start, stages=times,
        peak_rss_bytes=peak_rss_bytes(),
    )


def _join(threads: list[threading.Thread], timeout: float | None = None) -> bool:
    """Wait for ``threads`` (interruptibly, by short joins); True when all have ended."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for t in threads:
        while t.is_alive() and (deadline is None or time.monotonic() < deadline):
            t.join(POLL_S)
    return not any(t.is_alive() for t in threads)


#: reading threads beside a GPU engine at most (GDAL decodes a window in about 1.7 CPU ms)
MAX_READ_THREADS = 8


def _read_threads(engine: Engine) -> int:
    """Threads reading ahead: one beside a CPU engine, which needs every core (a second reader
    only competes with it), and up to :data:`MAX_READ_THREADS` beside a GPU engine, whose
    appetite one thread of GDAL decoding cannot meet, leaving two cores to the rest."""
    if str(engine.device).startswith("cpu"):
        return 1
    return max(1, min(MAX_READ_THREADS, (os.cpu_count() or 2) - 2))


def _blend_threads(engine: Engine) -> int:
    """Threads for the native blending loops: one beside a CPU engine, every core otherwise.

    A CPU engine keeps every core busy; a parallel blend there finds no idle core
    and adds OpenMP's spin-waiting to the engine's load (measured while both cores
    were busy: 6.6 ms of CPU per 512^2 window with two threads, 1.4 ms with one).
    Beside a GPU engine the cores are free, and the blend may be what limits the
    pipeline.
    """
    return 1 if engine.device == "cpu" else 0
