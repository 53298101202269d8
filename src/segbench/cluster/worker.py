"""What runs in a Dask worker process: one loaded engine per process, and one chunk per task.

Tasks carry paths, never engines: a worker loads the engine the first time a
task needs it and keeps it for every later chunk (a worker plugin's ``setup``
would run on the worker's event loop, where a slow load misses heartbeats).
Worker processes start with spawn, so everything here is importable at
module level.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

#: this process's loaded engine: ((artifact, mtime, batch, threads), engine)
_loaded: tuple[tuple, object] | None = None


def engine_for(artifact: str, batch: int, threads: int | None = None):
    """The engine at ``artifact``, loaded once per worker process (a rebuilt artifact is reloaded)."""
    global _loaded
    from segbench.engines.registry import load

    key = (artifact, os.stat(artifact).st_mtime_ns, batch, threads)
    if _loaded is None or _loaded[0] != key:
        if _loaded is not None:
            _loaded[1].close()
            _loaded = None
        _loaded = (key, load(artifact, mode="throughput", batch=batch, threads=threads))
    return _loaded[1]


def segment_chunk_task(artifact: str, scene: str, chunk, step: int, blend: str, batch: int,
                       nodata: float | None, threads_by_host: dict[str, int],
                       aoi: dict | None = None) -> np.ndarray:
    """One chunk's uint8 labels, on this worker's engine.

    ``threads_by_host``: the CPU threads each worker of a host may use (its
    cores shared among its workers), so that workers do not oversubscribe them.
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
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from segbench.files import atomic_output
    from segbench.raster import LABEL_BLOCK, LABEL_NODATA

    with atomic_output(dest) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", driver="GTiff", width=chunk.width, height=chunk.height, count=1,
                           dtype="uint8", crs=crs, nodata=LABEL_NODATA, compress="lzw", tiled=True,
                           transform=window_transform(Window(chunk.col, chunk.row, chunk.width, chunk.height),
                                                      transform),
                           blockxsize=LABEL_BLOCK, blockysize=LABEL_BLOCK) as ds:
            ds.write(labels, 1)


def writable_folder(path: str) -> bool:
    """True when this worker can write files into the folder ``path``."""
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def describe_worker(paths: list[str]) -> dict:
    """What the client checks before submitting: this worker's segbench and the paths it cannot read."""
    from segbench import __version__

    return {"version": __version__, "host": socket.gethostname(), "cores": os.cpu_count() or 1,
            "unreadable": [p for p in paths if not os.access(p, os.R_OK) or not Path(p).is_file()]}

