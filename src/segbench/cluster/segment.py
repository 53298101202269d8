"""Scenes in chunks on dask.distributed: a LocalCluster on this machine, or a running scheduler.

The client plans each scene's chunks (:mod:`segbench.tiler.chunks`), keeps a
bounded number in flight (twice the workers: backpressure, so finished
chunks never pile up in the client), and writes each chunk's uint8 labels
with the same :class:`~segbench.raster.LabelWriter` as one process, finishing
the same COG under a temporary name. With ``chunk_files`` (for outputs too
large to pass through the client) each worker writes its chunk to a GeoTIFF
of its own on shared storage and returns only the path; the client finishes
the same COG from a VRT of them. Dask re-runs the chunks of a worker that
dies on another one; a chunk that fails stops the job with one sentence
naming the scene and the chunk, and nothing is left under the output name.
An interrupted client (Ctrl-C, SIGTERM) keeps the finished chunks, and the
same command run again submits only the others (:mod:`segbench.cluster.resume`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import rasterio

from segbench import __version__
from segbench.cluster.resume import RunState, chunk_folder, chunk_path, note, run_key, staged_path
from segbench.cluster.worker import (
    describe_worker,
    segment_chunk_file_task,
    segment_chunk_task,
    writable_folder,
)
from segbench.errors import InputError, OutputError, SegbenchError, first_line
from segbench.extras import require
from segbench.peak import peak_rss_bytes
from segbench.raster import (
    AreaOfInterest,
    LabelWriter,
    SceneInfo,
    check_bands,
    is_url,
    open_raster,
    scene_info,
    write_label_mosaic,
)
from segbench.spec import ModelSpec
from segbench.tiler.chunks import CHUNK, plan_chunks
from segbench.tiler.fit import check_pixels
from segbench.tiler.pipeline import SegmentResult, StageTimes
from segbench.tiler.progress import Progress
from segbench.tiler.scenes import make_folders, plan_outputs
from segbench.tiler.windows import axis_starts, stride_for

#: seconds to reach a scheduler, and to wait for its first worker
CONNECT_S = 10
#: GDAL's block cache in the client, which writes whole chunks and then the COG: without a cap
#: GDAL takes 5% of the machine's memory (1.4 GB peaks measured at 30,000^2 and 100,000^2)
CLIENT_CACHE_BYTES = 256 << 20


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None,
                timeout: float = CONNECT_S) -> Iterator:
    """A ``distributed.Client``: to ``scheduler`` if given, else to a new LocalCluster of
    ``workers`` processes with one thread each (closed on exit)."""
    distributed = require("distributed", "--workers / --scheduler (the 'cluster' extra)")
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"Cannot reach the Dask scheduler at {scheduler}: {first_line(exc)}.") from exc
        try:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                raise InputError(f"The Dask scheduler at {scheduler} has no workers (waited "
                                 f"{timeout:.0f} s); start some with 'dask worker'.") from None
            yield client
        finally:
            client.close()
        return
    if not workers or workers < 1:
        raise InputError("--workers must be at least 1.")
    # No dashboard; the scheduler's HTTP server (health, metrics) on a free local port: on 8787, its
    # default even without a dashboard, it warns when another cluster of this machine holds the port.
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.CRITICAL,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def check_workers(client, paths: Sequence[str]) -> dict[str, int]:
    """Every worker runs this segbench and reads ``paths``; returns the CPU threads each worker
    thread of a host may use (the host's cores shared among every worker thread there: each runs
    its own engine), by host."""
    infos = client.run(describe_worker, [str(p) for p in paths])
    if not infos:
        raise InputError("The Dask cluster has no workers.")
    for address, info in sorted(infos.items()):
        if info["version"] != __version__:
            raise InputError(f"The Dask worker at {address} runs segbench {info['version']}, this client "
                             f"{__version__}; install the same version on every worker.")
        if info["unreadable"]:
            raise InputError(f"The Dask worker at {address} ({info['host']}) cannot read "
                             f"{info['unreadable'][0]}; put the engine and scenes on storage every "
                             "worker sees, at the same path.")
    threads = Counter()
    for info in infos.values():
        threads[info["host"]] += info["threads"]
    cores = {info["host"]: info["cores"] for info in infos.values()}
    return {host: max(1, cores[host] // n) for host, n in threads.items()}


def worker_resources(dask_scheduler) -> dict[str, dict]:
    """On the scheduler: each worker's declared resources (``dask worker --resources GPU=1``)."""
    return {address: dict(ws.resources) for address, ws in dask_scheduler.workers.items()}


def check_resources(client, resources: dict[str, float] | None) -> None:
    """One sentence, instead of tasks that wait forever, when no worker offers ``resources``."""
    if not resources:
        return
    offered = client.run_on_scheduler(worker_resources)
    if not any(all(have.get(k, 0) >= v for k, v in resources.items()) for have in offered.values()):
        wanted = ",".join(f"{k}={v:g}" for k, v in resources.items())
        raise InputError(f"No Dask worker offers {wanted}; start GPU workers with "
                         f"'dask worker ADDRESS --nthreads 1 --resources {wanted}'.")


def check_chunk_files(client, folder: str | os.PathLike[str]) -> Path:
    """The ``--chunk-files`` folder (made if missing), absolute; one sentence unless this client and
    every worker can write to it."""
    folder = Path(folder).absolute()
    advice = "give --chunk-files a writable folder on storage that every worker and this client share"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot write chunk files to {folder} ({exc.strerror or exc}); {advice}.") from exc
    if not writable_folder(str(folder)):
        raise OutputError(f"Cannot write chunk files to {folder} (permission denied); {advice}.")
    for address, ok in sorted(client.run(writable_folder, str(folder)).items()):
        if not ok:
            raise OutputError(f"The Dask worker at {address} cannot write chunk files to {folder}; {advice}.")
    return folder


def worker_peaks(client) -> dict[str, int]:
    """Each worker process's resident-memory high-water mark (bytes), by address."""
    return client.run(peak_rss_bytes)


def segment_on_cluster(client, scenes: Sequence[str | os.PathLike[str]], artifact: str | os.PathLike[str],
                       out: str | os.PathLike[str], *, chunk: int = CHUNK, overlap: int | None = None,
                       stride: int | None = None, blend: str = "cosine", batch: int = 4,
                       nodata: float | None = None, aoi: AreaOfInterest | None = None,
                       resources: dict[str, float] | None = None, progress: bool = True,
                       on_chunk: Callable[[int, int], None] | None = None,
                       on_scene: Callable[[SegmentResult], None] | None = None,
                       chunk_files: str | os.PathLike[str] | None = None,
                       spec: ModelSpec | None = None) -> list[SegmentResult]:
    """Segment ``scenes`` (files, folders, VRTs) in chunks on ``client``'s workers.

    ``out`` as for :func:`segbench.tiler.segment_many`: the label file for one
    scene ending in .tif, else a folder of ``<scene>.labels.tif``. The labels
    equal one process's run whenever the engine gives the same logits for the
    same window (:mod:`segbench.tiler.chunks`). ``resources`` (e.g. ``{"GPU": 1}``)
    is what each chunk's task asks of its worker. ``on_chunk(done, total)`` is
    called after each chunk of a scene is written (``done`` counts the chunks
    an interrupted run finished), ``on_scene`` with each scene's result.
    ``chunk_files``: a folder every worker and this client share, where the
    workers write the chunks' labels (see :func:`check_chunk_files`). ``spec``:
    the engine's, where the caller has read it already (else read from beside
    ``artifact``; each worker reads it when it loads the engine).

    Interrupted (KeyboardInterrupt), the run keeps the finished chunks beside
    the output, and the same call resumes from them
    (:mod:`segbench.cluster.resume`).
    """
    artifact = Path(artifact).resolve()
    spec = spec if spec is not None else ModelSpec.load(artifact)
    planned = plan_outputs(scenes, out)
    make_folders(planned, out)
    outputs = [(o.scene if is_url(o.scene) else o.scene.resolve(), o.labels) for o in planned]
    sidecars = [artifact.with_suffix(".bin")] if artifact.suffix == ".xml" else []
    files = [artifact, *sidecars, *(s for s, _ in outputs if not is_url(s))]  # URLs: read by each worker
    threads = check_workers(client, [str(p) for p in files])
    check_resources(client, resources)
    folder = check_chunk_files(client, chunk_files) if chunk_files is not None else None
    sizes = []  # (chunks, megapixels) per scene: the whole job's progress
    for scene, _ in outputs:
        with open_raster(scene) as ds:
            sizes.append((len(plan_chunks(ds.height, ds.width, chunk)), ds.width * ds.height / 1e6))
    name = Path(str(outputs[0][0])).name if len(outputs) == 1 else f"{len(outputs)} scenes"
    bar = Progress(sum(n for n, _ in sizes), name, sum(mp for _, mp in sizes), enabled=progress)
    step = stride_for(spec.tile, overlap, stride, default=spec.stride)
    job = _Job(client, artifact, spec, threads, chunk, step, blend, batch, nodata, aoi, resources, folder)
    results = []
    try:
        befores = itertools.accumulate((n for n, _ in sizes), initial=0)  # chunks of earlier scenes
        for (scene, dest), before in zip(outputs, befores, strict=False):
            with rasterio.Env(GDAL_CACHEMAX=CLIENT_CACHE_BYTES):
                results.append(_SceneRun(job, scene, dest).run(bar, before, on_chunk))
            if on_scene is not None:
                on_scene(results[-1])
    finally:
        bar.close()
    return results


@dataclass(frozen=True)
class _Job:
    """What every scene of one :func:`segment_on_cluster` call shares."""

    client: object
    artifact: Path
    spec: ModelSpec
    threads: dict[str, int]  # CPU threads per worker thread, by host
    chunk: int
    step: int
    blend: str
    batch: int
    nodata: float | None
    aoi: AreaOfInterest | None
    resources: dict[str, float] | None
    chunk_files: Path | None


class _SceneRun:
    """One scene on the cluster, in named steps: plan its chunks and what an interrupted run left
    (:meth:`__init__`), keep twice as many chunk tasks in flight as the workers run (:meth:`_submit`),
    write each chunk as it lands and note it (:meth:`_land`), then finish the COG (:meth:`_finish`),
    or keep what is done when interrupted (:meth:`_keep`) and drop it on any failure (:meth:`_drop`)."""

    def __init__(self, job: _Job, scene: Path | str, dest: Path) -> None:
        self.job, self.scene, self.dest = job, scene, dest
        with open_raster(scene) as ds:
            self.info = scene_info(ds)
            check_bands(self.info, job.spec)
            check_pixels(ds, self.info, job.spec, job.nodata)
        self.area = job.aoi.for_scene(self.info) if job.aoi is not None else None
        self.chunks = plan_chunks(self.info.height, self.info.width, job.chunk)
        self.folder = chunk_folder(job.chunk_files, dest) if job.chunk_files is not None else None
        key = run_key(scene, job.artifact, job.spec, self.info, chunk=job.chunk, stride=job.step,
                      blend=job.blend, batch=job.batch, nodata=job.nodata, aoi=self.area, folder=self.folder)
        self.state = RunState.start(dest, key, self.chunks)
        self.writer = _staged_writer(dest, self.info, job.spec, self.state) if self.folder is None else None
        self.where: dict = {}  # future -> its chunk
        self.todo: Iterator = iter(())
        self.running = None

    def run(self, bar: Progress, before: int, on_chunk) -> SegmentResult:
        """Every chunk not finished yet; ``bar`` is the job's, ``before`` chunks into it."""
        from distributed import as_completed

        try:
            self.state.begin()
        except BaseException:
            self._drop()
            raise
        if self.state.finished:
            note(f"resuming {self.dest.name}: {len(self.state.finished)} of {len(self.chunks)} chunks "
                 "were finished by an interrupted run.")
        self.todo = iter([c for c in self.chunks if (c.row, c.col) not in self.state.finished])
        self.running = as_completed()
        done = len(self.state.finished)
        if done:
            bar.update(before + done)  # rich leaves a first jump out of the rate
        start = time.perf_counter()
        complete = False
        try:
            for _ in range(2 * sum(self.job.client.nthreads().values())):  # twice what the workers run
                self._submit()
            for future in self.running:
                self._land(future)
                done += 1
                bar.update(before + done)
                if on_chunk is not None:
                    on_chunk(done, len(self.chunks))
                self._submit()
            self._finish()
            complete = True
            self.state.finish()
        except KeyboardInterrupt:
            self._cancel()
            if complete:
                self.state.finish()
                raise
            self._keep(bar)
            raise
        except BaseException:
            self._cancel()
            self._drop()
            raise
        return self._result(time.perf_counter() - start)

    def _submit(self) -> bool:
        """One more chunk's task, if any is left."""
        job, c = self.job, next(self.todo, None)
        if c is None:
            return False
        args = (str(job.artifact), str(self.scene), c, job.step, job.blend, job.batch, job.nodata,
                job.threads, self.area)
        if self.folder is None:
            future = job.client.submit(segment_chunk_task, *args, resources=job.resources, pure=False)
        else:
            future = job.client.submit(segment_chunk_file_task, *args, str(chunk_path(self.folder, c)),
                                       self.info.crs, self.info.transform, resources=job.resources,
                                       pure=False)
        self.where[future] = c
        self.running.add(future)
        return True

    def _land(self, future) -> None:
        """A finished chunk: its labels into the staged raster (or its file, written by the worker),
        and into the resume state (saved now and then, after what it lists is on disk)."""
        c = self.where.pop(future)
        name = self.info.path.name
        try:
            labels = future.result()
        except SegbenchError as exc:
            raise type(exc)(f"Chunk {c} of {name} failed: {exc}") from exc
        except Exception as exc:
            raise InputError(f"Chunk {c} of {name} failed: {type(exc).__name__}: {first_line(exc)}.") from exc
        if self.writer is not None:
            self.writer.write_rows(c.row, labels, c.col)
        self.state.finished.add((c.row, c.col))
        if self.writer is not None and self.state.due():
            self.writer.flush()  # the chunks listed are on disk before the manifest lists them
            self.state.save()

    def _finish(self) -> None:
        """The COG under its final name: from the staged raster, or from the chunk files."""
        spec = self.job.spec
        if self.writer is not None:
            self.writer.close()
        else:
            parts = [(chunk_path(self.folder, c), c.row, c.col, c.height, c.width) for c in self.chunks]
            write_label_mosaic(self.dest, self.info, parts, classes=spec.classes, palette=spec.palette)

    def _cancel(self) -> None:
        for future in self.where:
            future.cancel()

    def _keep(self, bar: Progress) -> None:
        """Interrupted: the finished chunks stay beside the output for the same command to resume."""
        if self.writer is not None:
            self.writer.suspend()
        self.state.save()
        bar.close()
        note(f"{self.dest.name}: {len(self.state.finished)} of {len(self.chunks)} chunks kept in "
             f"{self.state.where()}; run the same command again to resume.")

    def _drop(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        self.state.discard()

    def _result(self, seconds: float) -> SegmentResult:
        info, spec, step = self.info, self.job.spec, self.job.step
        windows = (len(axis_starts(info.height, spec.tile, step))
                   * len(axis_starts(info.width, spec.tile, step)))
        return SegmentResult(scene=str(self.scene), output=str(self.dest), confidence=None, width=info.width,
                             height=info.height, windows=windows, skipped=0, batches=0, seconds=seconds,
                             stages=StageTimes(), peak_rss_bytes=peak_rss_bytes())


def _staged_writer(dest: Path, info: SceneInfo, spec: ModelSpec, state: RunState) -> LabelWriter:
    """The label writer of ``dest``, on the staged raster an interrupted run left when there is one."""
    options = dict(classes=spec.classes, palette=spec.palette, stage=staged_path(dest))
    if state.finished:
        try:
            return LabelWriter(dest, info, resume=True, **options)
        except OutputError as exc:
            note(f"starting {dest.name} afresh: {exc}")
            state.finished.clear()
    try:
        return LabelWriter(dest, info, **options)
    except BaseException:
        state.discard()
        raise
