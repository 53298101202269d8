"""What runs in a Dask worker: one loaded engine per worker thread, and one chunk per task.

Tasks carry paths, never engines: a worker thread loads the engine the first
time a task needs it and keeps it for every later chunk it runs (a worker
plugin's ``setup`` would run on the worker's event loop, where a slow load
misses heartbeats). ``dask worker`` starts several threads by default, and
two tasks may run at once: each thread has its own engine (runtimes' sessions
are not all safe to share, and two threads must not load one at once), sized
for its share of the host's cores (:func:`segbench.cluster.segment.check_workers`).
Worker processes start with spawn, so everything here is importable at
module level.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import numpy as np

#: this thread's loaded engine: ``.loaded`` = ((artifact, mtime, batch, threads), engine)
_local = threading.local()
_count_lock = threading.Lock()
#: engines this process has loaded, over all its threads (what a test or a curious user reads)
loads = 0


def engine_for(artifact: str, batch: int, threads: int | None = None):
    """The engine at ``artifact``, loaded once per worker thread (a rebuilt artifact is reloaded)."""
    global loads
    from segbench.engines.registry import load

    key = (artifact, os.stat(artifact).st_mtime_ns, batch, threads)
    loaded = getattr(_local, "loaded", None)
    if loaded is None or loaded[0] != key:
        if loaded is not None:
            loaded[1].close()
            _local.loaded = None
        _local.loaded = (key, load(artifact, mode="throughput", batch=batch, threads=threads))
        with _count_lock:
            loads += 1
    return _local.loaded[1]


def engines_loaded() -> int:
    """How many engines this worker process has loaded (one per thread that ran a chunk)."""
    return loads


def segment_chunk_task(artifact: str, scene: str, chunk, step: int, blend: str, batch: int,
                       nodata: float | None, threads_by_host: dict[str, int],
                       aoi: dict | None = None) -> np.ndarray:
    """One chunk's uint8 labels, on this worker's engine.

    ``threads_by_host``: the CPU threads each worker thread of a host may use
    (its cores shared among every worker thread there), so that the engines do
    not oversubscribe them.
    """
    from segbench.errors import SegbenchError
    from segbench.tiler.chunks import segment_chunk

    threads = threads_by_host.get(socket.gethostname())
    try:
        return segment_chunk(engine_for(artifact, batch, threads), scene, chunk, step=step, blend=blend,
                             batch=batch, nodata=nodata, aoi=aoi)
    except SegbenchError as exc:
        failure = type(exc), str(exc)
    # Raised outside the handler, so it carries its sentence alone: Dask pickles an error with its
    # causes and context (tblib), and a GDAL error among them turns it into a bare Exception(repr).
    raise failure[0](failure[1])


def segment_chunk_file_task(artifact: str, scene: str, chunk, step: int, blend: str, batch: int,
                            nodata: float | None, threads_by_host: dict[str, int], aoi: dict | None,
                            dest: str, crs, transform) -> str:
    """One chunk's labels written to ``dest`` (a GeoTIFF, georeferenced from the scene's ``crs`` and
    ``transform``, renamed into place when complete), for outputs too large to pass through the
    client; returns ``dest``."""
    from segbench.errors import OutputError, SegbenchError, first_line

    labels = segment_chunk_task(artifact, scene, chunk, step, blend, batch, nodata, threads_by_host, aoi)
    try:
        write_chunk_file(dest, labels, chunk, crs, transform)
        return dest
    except Exception as exc:  # OSError, GDAL's, or atomic_output's sentence
        failure = exc if isinstance(exc, SegbenchError) else f"Could not write {dest}: {first_line(exc)}."
    raise OutputError(str(failure))  # outside the handler: see segment_chunk_task


def write_chunk_file(dest: str | os.PathLike[str], labels: np.ndarray, chunk, crs, transform) -> None:
    """``labels`` of ``chunk`` as a one-band GeoTIFF in label blocks; a file under ``dest`` is complete."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import transform as window_transform

    from segbench.files import atomic_output
    from segbench.raster import LABEL_BLOCK, LABEL_NODATA

    with atomic_output(dest) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", driver="GTiff", width=chunk.width, height=chunk.height, count=1,
                           dtype="uint8", crs=crs, nodata=LABEL_NODATA, compress="lzw", tiled=True,
                           transform=window_transform(chunk.to_rasterio(), transform),
                           blockxsize=LABEL_BLOCK, blockysize=LABEL_BLOCK) as ds:
            ds.write(labels, 1)


def writable_folder(path: str) -> bool:
    """True when this worker can write files into the folder ``path``."""
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def describe_worker(paths: list[str], dask_worker=None) -> dict:
    """What the client checks before submitting: this worker's segbench, its threads and the paths
    it cannot read (``dask_worker`` is passed by ``Client.run``)."""
    from segbench import __version__

    return {"version": __version__, "host": socket.gethostname(), "cores": os.cpu_count() or 1,
            "threads": getattr(dask_worker, "state", dask_worker).nthreads if dask_worker else 1,
            "unreadable": [p for p in paths if not os.access(p, os.R_OK) or not Path(p).is_file()]}

