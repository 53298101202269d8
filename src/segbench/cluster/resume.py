"""What a Dask run leaves when its client is interrupted, so that the same command resumes it.

While it works on ``labels.tif`` a run keeps beside it:

- ``.labels.tif.resume.tif``: the staged label raster, into which the client
  writes each chunk as it finishes (without ``--chunk-files``);
- ``.labels.tif.resume.json``: the manifest: what the run makes
  (:func:`run_key`: the scene and the engine files with their sizes and
  modification times, the output grid and classes, the chunk plan), which
  chunks are finished, and the client's host and process. It is rewritten
  atomically at most every :data:`SAVE_EVERY_S` seconds and at an interrupt,
  each time after the staged raster is flushed, so every chunk it lists is on
  disk.

With ``--chunk-files DIR`` the workers write each chunk to a GeoTIFF of its
own in ``DIR/<output stem>-<digest of the output path>/``, renamed into place
when complete: the files there are the finished chunks, and the manifest
names the folder.

Ctrl-C (or SIGTERM / SIGHUP) keeps all of it. The same command run again
finds the manifest; when it was written for the same run it submits only the
unfinished chunks, otherwise it starts afresh and says why in one line.
Success removes it all, and so does a chunk that fails (bad data would fail
again). Nothing is ever left under the output's own name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from segbench import __version__
from segbench.errors import OutputError
from segbench.files import process_exists, remove_quietly, sha256_bytes, write_text
from segbench.raster import SceneInfo, is_url
from segbench.spec import ModelSpec
from segbench.tiler.chunks import Chunk, chunk_side

FORMAT = "segbench-dask-resume/1"
#: the least seconds between two saves of the manifest (each flushes the staged raster first)
SAVE_EVERY_S = 1.0

#: how the manifest's fields are named to users
_WHAT = {"format": "manifest format", "segbench": "segbench version", "scene": "scene file",
         "engine": "engine", "output": "output grid or classes", "chunk_files": "--chunk-files folder",
         "chunk": "chunk size", "stride": "window stride (--overlap)", "blend": "--blend",
         "batch": "--batch", "nodata": "--nodata", "aoi": "--aoi"}


def staged_path(dest: Path) -> Path:
    """The staged label raster of ``dest``, kept for a resumed run."""
    return dest.parent / f".{dest.name}.resume.tif"


def manifest_path(dest: Path) -> Path:
    """The manifest of ``dest``'s run."""
    return dest.parent / f".{dest.name}.resume.json"


def chunk_folder(chunk_files: Path, dest: Path) -> Path:
    """The folder of ``dest``'s chunk files in the ``--chunk-files`` folder (one per output path)."""
    return Path(chunk_files).absolute() / f"{dest.stem}-{sha256_bytes(str(dest.absolute()).encode())[:8]}"


def chunk_path(folder: Path, chunk: Chunk) -> Path:
    """The chunk file of ``chunk`` in ``folder``."""
    return folder / f"r{chunk.row}-c{chunk.col}.tif"


def run_key(scene: Path | str, artifact: Path, spec: ModelSpec, info: SceneInfo, *, chunk: int, stride: int,
            blend: str, batch: int, nodata: float | None, aoi: dict | None, folder: Path | None) -> dict:
    """What a run's finished chunks depend on, as plain JSON data."""
    engine_files = [artifact, *([artifact.with_suffix(".bin")] if artifact.suffix == ".xml" else [])]
    key = {
        "format": FORMAT,
        "segbench": __version__,
        "scene": _identity(scene),
        "engine": [_identity(p) for p in engine_files],
        "output": {"width": info.width, "height": info.height,
                   "crs": info.crs.to_wkt() if info.crs is not None else None,
                   "transform": list(info.transform)[:6] if info.transform is not None else None,
                   "classes": list(spec.classes), "palette": [list(c) for c in spec.palette]},
        "chunk": chunk_side(chunk), "stride": stride, "blend": blend, "batch": batch,
        "nodata": None if nodata is None else repr(float(nodata)),  # a string: NaN equals itself
        "aoi": None if aoi is None else sha256_bytes(json.dumps(aoi, sort_keys=True).encode()),
        "chunk_files": str(folder) if folder is not None else None,
    }
    return json.loads(json.dumps(key))


def _identity(path: Path | str) -> dict:
    if is_url(path):
        return {"path": str(path)}
    stat = os.stat(path)
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def note(line: str) -> None:
    """One line for the user about a run's resume state (stderr: stdout has the scenes' lines)."""
    print(f"segbench: {line}", file=sys.stderr, flush=True)


class RunState:
    """One output's run: its manifest, and the chunks finished (``(row, col)``)."""

    def __init__(self, dest: Path, key: dict) -> None:
        self.dest = dest
        self.key = key
        self.path = manifest_path(dest)
        self.folder = Path(key["chunk_files"]) if key["chunk_files"] else None
        self.finished: set[tuple[int, int]] = set()
        self._saved = time.monotonic()

    @classmethod
    def start(cls, dest: Path, key: dict, chunks: Iterable[Chunk],
              say: Callable[[str], None] = note) -> RunState:
        """The state an interrupted run of ``key`` left for ``dest``, or a fresh one (said in one
        line when an earlier run's leftovers cannot be used, and removed)."""
        state = cls(dest, key)
        earlier = state._read()
        why = None
        if earlier is not None:
            _check_not_running(earlier, dest, state.path)
            differ = _differences(earlier.get("key"), key)
            if not earlier:
                why = f"its manifest {state.path.name} is unreadable"
            elif differ:
                why = f"the interrupted run left beside it had another {', '.join(differ)}"
            elif state.folder is not None:
                state.finished = {(c.row, c.col) for c in chunks if chunk_path(state.folder, c).is_file()}
            elif staged_path(dest).is_file():
                listed = {tuple(rc) for rc in earlier.get("finished", [])}
                state.finished = {(c.row, c.col) for c in chunks} & listed
            else:
                why = f"the staged output of the interrupted run, {staged_path(dest).name}, is gone"
        if why is not None:
            say(f"starting {dest.name} afresh: {why}.")
        if not state.finished:  # nothing usable: no leftover may pass for a finished chunk
            state._remove(earlier)
        return state

    def begin(self) -> None:
        """Write the manifest (and make the chunk files' folder) before any chunk is submitted."""
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"Cannot make {self.folder} for the chunk files: {exc.strerror or exc}; "
                                  "give --chunk-files a writable folder.") from exc
        self.save()

    def due(self) -> bool:
        """True when the manifest was saved longer than :data:`SAVE_EVERY_S` ago."""
        return time.monotonic() - self._saved >= SAVE_EVERY_S

    def save(self) -> None:
        """Rewrite the manifest atomically (list only chunks whose labels are on disk)."""
        write_text(self.path, json.dumps({
            "key": self.key,
            "finished": sorted(list(rc) for rc in self.finished),
            "client": {"host": socket.gethostname(), "pid": os.getpid()},
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=1))
        self._saved = time.monotonic()

    def where(self) -> Path:
        """Where the finished chunks are kept."""
        return self.folder if self.folder is not None else staged_path(self.dest)

    def finish(self) -> None:
        """The output is complete: remove the manifest and the chunk files."""
        remove_quietly(self.path)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def discard(self) -> None:
        """The run failed: remove the manifest, the staged raster and the chunk files."""
        self._remove(None)

    def _read(self) -> dict | None:
        try:
            earlier = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return earlier if isinstance(earlier, dict) else {}

    def _remove(self, earlier: dict | None) -> None:
        remove_quietly(self.path)
        remove_quietly(staged_path(self.dest))
        folders = {self.folder}
        other = (earlier or {}).get("key")
        if isinstance(other, dict) and isinstance(other.get("chunk_files"), str):
            folders.add(Path(other["chunk_files"]))
        pattern = re.compile(rf"{re.escape(self.dest.stem)}-[0-9a-f]{{8}}")
        for folder in folders:  # only folders named as chunk_folder names them, whatever a manifest says
            if folder is not None and pattern.fullmatch(folder.name):
                shutil.rmtree(folder, ignore_errors=True)


def _differences(earlier, key: dict) -> list[str]:
    """The names of what differs between an earlier run's key and this one's."""
    if not isinstance(earlier, dict) or earlier.get("format") != key["format"]:
        return [_WHAT["format"]]
    return [_WHAT.get(k, k) for k in key if earlier.get(k) != key[k]]


def _check_not_running(earlier: dict, dest: Path, manifest: Path) -> None:
    """Refuse to take over the output of a run that is still going on this host."""
    client = earlier.get("client") or {}
    pid = client.get("pid")
    if (client.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid()
            and process_exists(pid)):
        raise OutputError(f"Another segbench process ({pid}) is writing {dest}; wait for it to finish or "
                          f"stop it (if process {pid} is not segbench, remove {manifest}).")
