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


def _worker_resources(dask_scheduler) -> dict[str, dict]:
    """On the scheduler: each worker's declared resources (``dask worker --resources GPU=1``)."""
    return {address: dict(ws.resources) for address, ws in dask_scheduler.workers.items()}


def check_resources(client, resources: dict[str, float] | None) -> None:
    """One sentence, instead of tasks that wait forever, when no worker offers ``resources``."""
    if not resources:
        return
    offered = client.run_on_scheduler(_worker_resources)
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
                       chunk_files: str | os.PathLike[str] | None = None) -> list[SegmentResult]:
    """Segment ``scenes`` (files, folders, VRTs) in chunks on ``client``'s workers.

    ``out`` as for :func:`segbench.tiler.segment_many`: the label file for one
    scene ending in .tif, else a folder of ``<scene>.labels.tif``. The labels
    equal one process's run whenever the engine gives the same logits for the
    same window (:mod:`segbench.tiler.chunks`). ``resources`` (e.g. ``{"GPU": 1}``)
    is what each chunk's task asks of its worker. ``on_chunk(done, total)`` is
    called after each chunk of a scene is written (``done`` counts the chunks
    an interrupted run finished), ``on_scene`` with each scene's result.
    ``chunk_files``: a folder every worker and this client share, where the
    workers write the chunks' labels (see :func:`check_chunk_files`).

    Interrupted (KeyboardInterrupt), the run keeps the finished chunks beside
    the output, and the same call resumes from them
    (:mod:`segbench.cluster.resume`).
    """
    artifact = Path(artifact).resolve()
    spec = ModelSpec.load(artifact)
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
    results = []
    try:
        befores = itertools.accumulate((n for n, _ in sizes), initial=0)  # chunks of earlier scenes
        for (scene, dest), before in zip(outputs, befores, strict=False):
            with rasterio.Env(GDAL_CACHEMAX=CLIENT_CACHE_BYTES):
                results.append(_one_scene(client, threads, scene, artifact, spec, dest, chunk, overlap,
                                          stride, blend, batch, nodata, aoi, resources, bar, before,
                                          on_chunk, folder))
            if on_scene is not None:
                on_scene(results[-1])
    finally:
        bar.close()
    return results


def _one_scene(client, threads: dict[str, int], scene: Path | str, artifact: Path, spec: ModelSpec,
               dest: Path, chunk: int, overlap, stride, blend: str, batch: int, nodata, aoi, resources,
               bar: Progress, before: int, on_chunk, chunk_files: Path | None) -> SegmentResult:
    """One scene of :func:`segment_on_cluster`; ``bar`` is the job's, ``before`` chunks into it."""
    from distributed import as_completed

    with open_raster(scene) as ds:
        info = scene_info(ds)
    check_bands(info, spec)
    area = aoi.for_scene(info) if aoi is not None else None
    step = stride_for(spec.tile, overlap, stride, default=spec.stride)
    chunks = plan_chunks(info.height, info.width, chunk)
    windows = len(axis_starts(info.height, spec.tile, step)) * len(axis_starts(info.width, spec.tile, step))
    folder = chunk_folder(chunk_files, dest) if chunk_files is not None else None
    key = run_key(scene, artifact, spec, info, chunk=chunk, stride=step, blend=blend, batch=batch,
                  nodata=nodata, aoi=area, folder=folder)
    state = RunState.start(dest, key, chunks)
    writer = _staged_writer(dest, info, spec, state) if folder is None else None
    try:
        state.begin()
    except BaseException:
        if writer is not None:
            writer.abort()
        state.discard()
        raise
    if state.finished:
        note(f"resuming {dest.name}: {len(state.finished)} of {len(chunks)} chunks were finished by an "
             "interrupted run.")
    todo = iter([c for c in chunks if (c.row, c.col) not in state.finished])
    running = as_completed()
    where = {}  # future -> its chunk
    in_flight = 2 * sum(client.nthreads().values())  # twice the tasks the workers run at once

    def submit() -> bool:
        c = next(todo, None)
        if c is None:
            return False
        args = (str(artifact), str(scene), c, step, blend, batch, nodata, threads, area)
        if folder is None:
            future = client.submit(segment_chunk_task, *args, resources=resources, pure=False)
        else:
            future = client.submit(segment_chunk_file_task, *args, str(chunk_path(folder, c)), info.crs,
                                   info.transform, resources=resources, pure=False)
        where[future] = c
        running.add(future)
        return True

    name = info.path.name
    done = len(state.finished)
    if done:
        bar.update(before + done)  # rich leaves a first jump out of the rate
    start = time.perf_counter()
    complete = False
    try:
        for _ in range(in_flight):
            submit()
        for future in running:
            c = where.pop(future)
            try:
                labels = future.result()
            except SegbenchError as exc:
                raise type(exc)(f"Chunk {c} of {name} failed: {exc}") from exc
            except Exception as exc:
                raise InputError(f"Chunk {c} of {name} failed: {type(exc).__name__}: "
                                 f"{first_line(exc)}.") from exc
            if writer is not None:
                writer.write_rows(c.row, labels, c.col)
            state.finished.add((c.row, c.col))
            done += 1
            bar.update(before + done)
            if on_chunk is not None:
                on_chunk(done, len(chunks))
            if writer is not None and state.due():
                writer.flush()  # the chunks listed are on disk before the manifest lists them
                state.save()
            submit()
        if writer is not None:
            writer.close()
        else:
            write_label_mosaic(dest, info, [(chunk_path(folder, c), c.row, c.col, c.height, c.width)
                                            for c in chunks], classes=spec.classes, palette=spec.palette)
        complete = True
        state.finish()
    except KeyboardInterrupt:
        for future in where:
            future.cancel()
        if complete:
            state.finish()
            raise
        if writer is not None:
            writer.suspend()
        state.save()
        bar.close()
        note(f"{dest.name}: {len(state.finished)} of {len(chunks)} chunks kept in {state.where()}; run the "
             "same command again to resume.")
        raise
    except BaseException:
        for future in where:
            future.cancel()
        if writer is not None:
            writer.abort()
        state.discard()
        raise
    seconds = time.perf_counter() - start
    return SegmentResult(scene=str(scene), output=str(dest), confidence=None, width=info.width,
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
