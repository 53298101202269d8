"""``segment`` as a library: whole scenes into label rasters and everything beside them.

Everything ``segbench segment`` does, for any caller (the command, a server's
scene jobs, a script): the options checked, the engine's spec read once, every
output planned and refused before any work where it would replace an input
(:mod:`segbench.protect`), the batch size chosen (``auto``: measured), the
scenes segmented in this process (:func:`segbench.tiler.segment_many`) or in
chunks on Dask (:func:`segbench.cluster.segment_on_cluster`), and the sidecars
of each scene written as it is done (QGIS styles, attribute tables, polygons,
STAC items: :class:`segbench.geo.sidecars.Sidecars`).

Nothing here prints. What a user should hear goes to :class:`Hooks`: a
:class:`Note` for each remark (the batch chosen, STAC items skipped), a
:class:`SceneProgress` as windows (or chunks) finish, a :class:`SceneDone` for
each scene; ``Hooks.cancelled`` is asked at each progress step and stops the
run with :class:`Cancelled`, leaving no partial output under a final name.
Results are typed (:class:`SegmentRun`).

It sits above ``cluster`` and beside ``bench`` (it uses ``cluster``, ``tiler``,
``geo`` and ``engines``); ``cli`` and ``serve`` call it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segbench.argfields import option, positive
from segbench.engines.batchsize import BatchChoice
from segbench.errors import UsageError
from segbench.geo.sidecars import Polygons, Sidecars
from segbench.raster import AreaOfInterest
from segbench.spec import ModelSpec
from segbench.tiler.chunks import CHUNK
from segbench.tiler.options import AUTO, TilingOptions
from segbench.tiler.pipeline import SegmentResult
from segbench.tiler.scenes import SceneOutput

POLYGONS = "polygons (the 'gis' extra)"
DASK = "in chunks on Dask (the 'cluster' extra)"
#: the batch on a running scheduler when ``auto`` is asked (the sweep would measure the client)
SCHEDULER_BATCH = 4


@dataclass(frozen=True)
class SegmentOptions(TilingOptions):
    """How ``segment`` runs (the inputs, scenes, engine and output, are the job's): each option's one
    default and its command-line help."""

    nodata: float | None = option(None, help="input nodata", default_help="the file's")
    confidence: bool = option(False, help="also write max-probability rasters")
    probabilities: bool = option(False, help="also write per-class probability rasters (a band per "
                                             "class, round(254 p), 255 nodata)")
    resample: bool = option(False, help="run each scene at the model's ground sample distance (a warped "
                                        "VRT), the outputs back on the scene's grid")
    aoi: Path | None = option(None, help="segment only inside the polygons of this vector file (.gpkg, "
                              ".geojson, ...; reprojected to each scene's CRS): windows outside are not "
                              "run, pixels outside are nodata")
    vector: Path | None = option(
        None, group=POLYGONS,
        help="also write one polygon per region (class id, class name, area in m2) to this .gpkg, "
             ".geojson or .fgb file; with several scenes, its extension gives the format of a file "
             "beside each label raster (x.labels.tif: x.polygons.gpkg)")
    min_area: float = option(0.0, group=POLYGONS, help="drop polygons smaller than this (m2)")
    simplify: float = option(0.0, group=POLYGONS, help="simplify polygons with this tolerance (map units)")
    workers: int | None = option(None, parse=positive, group=DASK, exclusive="where",
                                 help="start a local Dask cluster of this many worker processes (one "
                                      "thread each)")
    scheduler: str | None = option(None, group=DASK, exclusive="where",
                                   help="use a running Dask scheduler, e.g. tcp://host:8786 (the engine "
                                        "and scenes at the same paths on every worker)")
    chunk: int | None = option(None, parse=positive, group=DASK, default_help=f"{CHUNK}; whole label "
                               "blocks", help="chunk side in pixels on Dask")
    chunk_files: Path | None = option(
        None, metavar="DIR", group=DASK,
        help="workers write each chunk's labels to a file in DIR (storage every worker and this machine "
             "share) instead of sending them back: for outputs too large to pass through the client; "
             "removed when the scene is done")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("aoi", "vector", "chunk_files"):  # paths given as text (a server's JSON)
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.workers is not None and self.scheduler is not None:
            raise UsageError("Give --workers or --scheduler, not both.")
        if (self.chunk or self.chunk_files) and not self.on_dask:
            raise UsageError("--chunk and --chunk-files apply with --workers or --scheduler only.")
        if (self.confidence or self.probabilities or self.resample) and self.on_dask:
            raise UsageError("--confidence, --probabilities and --resample are not available with "
                             "--workers or --scheduler yet.")
        if self.workers is not None and self.workers < 1:
            raise UsageError("--workers must be at least 1.")

    @property
    def on_dask(self) -> bool:
        return bool(self.workers or self.scheduler)


class Cancelled(Exception):
    """:attr:`Hooks.cancelled` said so; the scene being segmented left nothing under its names."""


@dataclass(frozen=True)
class Note:
    """A remark for the user; ``about`` says what of: ``"batch"`` (the batch chosen), ``"stac"``
    (STAC items skipped, the 'stac' extra missing)."""

    about: str
    text: str


@dataclass(frozen=True)
class SceneProgress:
    """Scene ``scene`` (0-based) of ``scenes``: ``done`` of ``total`` windows (chunks on Dask)."""

    scene: int
    scenes: int
    done: int
    total: int


@dataclass(frozen=True)
class SceneDone:
    """A finished scene: its rasters (``result``) and sidecars written; ``polygons`` says what the
    polygons took ('' without ``--vector``)."""

    scene: int
    result: SegmentResult
    polygons: str = ""

    def line(self) -> str:
        """The command's line for it."""
        r = self.result
        return (f"{r.output}: {r.megapixels:.1f} MP at {r.megapixels_per_s:.2f} MP/s"
                + (f"; {self.polygons}" if self.polygons else ""))


def _nothing(_) -> None:
    return None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Hooks:
    """What a caller hears of a run, and how it stops one; each is called from the calling thread."""

    note: Callable[[Note], None] = _nothing
    progress: Callable[[SceneProgress], None] = _nothing
    scene_done: Callable[[SceneDone], None] = _nothing
    cancelled: Callable[[], bool] = _never


@dataclass(frozen=True)
class SegmentRun:
    """What a run did: each scene, the batch it ran at (and the sweep that chose it), the peak memory
    of this process and, on Dask, of each worker (bytes, by address)."""

    scenes: tuple[SceneDone, ...]
    batch: int
    batch_choice: BatchChoice | None
    peak_rss_bytes: int
    worker_peaks: dict[str, int] | None = None


@dataclass(frozen=True)
class SegmentJob:
    """One ``segment`` run, checked and planned before any work (:meth:`plan`), then run (:meth:`run`).

    ``spec`` is the engine's, read once; ``outputs`` the rasters of each scene; ``aoi`` the area of
    interest read from ``options.aoi``.
    """

    scenes: tuple[str | Path, ...]
    engine: Path
    out: Path
    options: SegmentOptions
    spec: ModelSpec
    sidecars: Sidecars
    outputs: tuple[SceneOutput, ...]
    aoi: AreaOfInterest | None = field(default=None, repr=False)

    @classmethod
    def plan(cls, scenes: Sequence[str | os.PathLike[str]], engine: str | os.PathLike[str],
             out: str | os.PathLike[str], options: SegmentOptions = SegmentOptions(),
             note: Callable[[Note], None] = _nothing) -> SegmentJob:
        """Check the options and inputs, read the engine's spec and the AOI, plan every output and
        refuse any that would replace an input or another output (one sentence, nothing written)."""
        from segbench.geo.stac import stac_missing
        from segbench.tiler.scenes import check_destination, plan_outputs

        if isinstance(scenes, str | os.PathLike):  # one scene given alone
            scenes = [scenes]
        if not scenes:
            raise UsageError("Give at least one scene to segment.")
        aoi = None
        if options.aoi is not None:
            from segbench.geo.aoi import read_aoi

            aoi = read_aoi(options.aoi)
        polygons = _polygons(options)
        spec = ModelSpec.load(engine)
        sidecars = Sidecars.where_possible(spec, polygons)
        if not sidecars.stac:  # said once, not once per scene
            note(Note("stac", f"skipping STAC items: {stac_missing()}"))
        outputs = plan_outputs(scenes, out, confidence=options.confidence,
                               probabilities=options.probabilities)
        check_destination(outputs, out)
        job = cls(tuple(scenes), Path(engine), Path(out), options, spec, sidecars, tuple(outputs), aoi)
        job.refuse_replacing_inputs()
        return job

    def refuse_replacing_inputs(self) -> None:
        """No output (rasters, sidecars, polygons, resume state, chunk files) may replace an input
        (scenes, the engine, the AOI) or another of its outputs."""
        from segbench.cluster.resume import chunk_folder, manifest_path, staged_path
        from segbench.files import check_output
        from segbench.protect import Inputs, refuse_shared

        inputs = Inputs().add_artifact(self.engine)
        if self.options.aoi is not None:
            inputs.add(self.options.aoi)
        outputs: list[tuple[Path, list[Path]]] = []  # each output with the files it is written as
        for o in self.outputs:
            inputs.add_raster(o.scene)
            written = self.sidecars.outputs(o.labels, o.confidence, o.probabilities, out=self.out)
            if self.options.on_dask:
                written[o.labels] += [staged_path(o.labels), manifest_path(o.labels)]
            outputs += written.items()
        inputs.refuse(f for _, files in outputs for f in files)
        refuse_shared(outputs)
        if self.options.chunk_files is not None:
            check_output(self.options.chunk_files, folder=True, create=True, option="--chunk-files")
            for o in self.outputs:
                inputs.refuse_folder(chunk_folder(self.options.chunk_files, o.labels))

    def choose_batch(self, note: Callable[[Note], None] = _nothing) -> tuple[int, BatchChoice | None]:
        """The batch to run at: the one given, or ``auto``'s measured choice (its sweep besides)."""
        from segbench.tiler.scenes import auto_batch

        batch = self.options.batch
        if batch != AUTO:
            return self._bounded(int(batch), note), None
        if self.options.scheduler:
            note(Note("batch", f"batch {SCHEDULER_BATCH} (auto measures this machine, not the cluster's "
                               "workers: give --batch to choose)"))
            return SCHEDULER_BATCH, None
        choice = auto_batch(self.engine, self.scenes, overlap=self.options.overlap, spec=self.spec)
        note(Note("batch", choice.describe()))
        return choice.batch, choice

    def _bounded(self, batch: int, note: Callable[[Note], None]) -> int:
        """A given batch cut to the windows of the largest scene (said), or refused in one sentence
        when its buffers would not fit in the memory available (:func:`segbench.tiler.bounded_batch`),
        before the engine is loaded for it."""
        from segbench.raster import open_raster, scene_info
        from segbench.tiler.pipeline import bounded_batch
        from segbench.tiler.windows import stride_for

        step = stride_for(self.spec.tile, self.options.overlap, default=self.spec.stride)
        name = self.spec.build.engine if self.spec.build else "the engine"
        cut = 1
        for scene in {o.scene for o in self.outputs}:  # folders of scenes expanded
            with open_raster(scene) as ds:
                cut = max(cut, bounded_batch(batch, scene_info(ds), self.spec, step, name))
        if cut < batch:
            note(Note("batch", f"batch {cut}, not {batch}: the largest scene has {cut} windows"))
        return cut

    def run(self, hooks: Hooks = Hooks(), progress: bool = False) -> SegmentRun:
        """Segment every scene, each one's sidecars written as soon as it is done; ``progress`` draws
        the tiler's bars on the terminal (the command's), besides ``hooks.progress``."""
        from segbench.peak import peak_rss_bytes

        tracker = _Tracker(self, hooks)
        tracker.check()
        batch, choice = self.choose_batch(hooks.note)
        peaks = None
        if self.options.on_dask:
            peaks = self._on_cluster(batch, tracker, progress)
        else:
            self._in_process(batch, tracker, progress)
        return SegmentRun(tuple(tracker.done), batch, choice, peak_rss_bytes(), peaks)

    def _in_process(self, batch: int, tracker: _Tracker, progress: bool) -> None:
        from segbench.engines.registry import load
        from segbench.tiler.scenes import segment_many

        o = self.options
        # batches back to back: OpenVINO compiles for them and keeps several in flight
        engine = load(self.engine, mode="throughput", batch=batch, spec=self.spec)
        try:
            segment_many(self.scenes, engine, self.out, overlap=o.overlap, blend=o.blend, batch=batch,
                         nodata=o.nodata, confidence=o.confidence, probabilities=o.probabilities,
                         aoi=self.aoi, resample=o.resample, progress=progress, on_scene=tracker.scene_done,
                         on_progress=tracker.progress)
        finally:
            engine.close()

    def _on_cluster(self, batch: int, tracker: _Tracker, progress: bool) -> dict[str, int]:
        from segbench.cluster import dask_client, segment_on_cluster, worker_peaks

        o = self.options
        with dask_client(o.workers, o.scheduler) as client:
            segment_on_cluster(client, self.scenes, self.engine, self.out, chunk=o.chunk or CHUNK,
                               overlap=o.overlap, blend=o.blend, batch=batch, nodata=o.nodata, aoi=self.aoi,
                               resources=self.gpu_resources(), chunk_files=o.chunk_files,
                               progress=progress, on_chunk=tracker.progress, on_scene=tracker.scene_done,
                               spec=self.spec)
            return worker_peaks(client)

    def gpu_resources(self) -> dict[str, float] | None:
        """On a running cluster, a GPU engine's chunks go to workers that declare a GPU (one each)."""
        from segbench.engines.registry import get_kind

        build = self.spec.build
        gpu = build is not None and bool(build.engine) and get_kind(build.engine).device == "cuda"
        return {"GPU": 1} if self.options.scheduler and gpu else None


def segment_scenes(scenes: Sequence[str | os.PathLike[str]], engine: str | os.PathLike[str],
                   out: str | os.PathLike[str], options: SegmentOptions = SegmentOptions(), *,
                   hooks: Hooks = Hooks(), progress: bool = False) -> SegmentRun:
    """Segment ``scenes`` (GeoTIFFs, VRTs, folders of them, URLs of COGs) with the engine at
    ``engine`` into ``out`` (the label file for one scene ending in .tif, else a folder of
    ``<scene>.labels.tif``), with every sidecar: :meth:`SegmentJob.plan` then :meth:`SegmentJob.run`."""
    return SegmentJob.plan(scenes, engine, out, options, hooks.note).run(hooks, progress)


def _polygons(options: SegmentOptions) -> Polygons | None:
    """``vector``'s polygons, checked before any work: a path polygons cannot go to is one sentence."""
    if options.vector is None:
        return None
    from segbench.files import check_output
    from segbench.geo.vector import driver_for

    driver_for(options.vector)
    check_output(options.vector, option="--vector")
    return Polygons(options.vector, min_area=options.min_area, simplify=options.simplify)


class _Tracker:
    """Each scene's progress and end, told to the hooks; the cancel check at each step."""

    def __init__(self, job: SegmentJob, hooks: Hooks) -> None:
        self.job, self.hooks = job, hooks
        self.done: list[SceneDone] = []

    def check(self) -> None:
        if self.hooks.cancelled():
            raise Cancelled(f"Cancelled before scene {len(self.done) + 1} of {len(self.job.outputs)}.")

    def progress(self, done: int, total: int) -> None:
        self.hooks.progress(SceneProgress(len(self.done), len(self.job.outputs), done, total))
        self.check()

    def scene_done(self, result: SegmentResult) -> None:
        job = self.job
        polygons = job.sidecars.write(result.output, confidence=result.confidence,
                                      probabilities=result.probabilities, scene=result.scene, out=job.out)
        self.done.append(SceneDone(len(self.done), result, polygons))
        self.hooks.scene_done(self.done[-1])
        if len(self.done) < len(job.outputs):
            self.check()
