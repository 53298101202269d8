"""Outputs never replace inputs.

A command names, before any work, every file it will write and every file it
reads; :meth:`Inputs.refuse` fails in one sentence when an output would
replace an input. Files are compared by identity (device and inode, through
symbolic links), so the same file under another name, a hard link or a
symbolic link to it is caught as well as the same path. Each input brings
the files that belong to it: for a raster, every file GDAL reads for it (its
``.aux.xml``, overviews, masks, world files, a VRT's sources) and the QGIS
style beside it; for a model or an engine, its spec and weight files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from segbench.errors import OutputError


class Inputs:
    """The files a command reads, by identity, each with the input it belongs to."""

    def __init__(self) -> None:
        self._files: dict[tuple[int, int], tuple[Path, Path]] = {}  # identity -> (file, the input given)
        self._folders: list[tuple[Path, Path]] = []  # (folder, the input given), resolved

    def add(self, path: str | os.PathLike[str], of: str | os.PathLike[str] | None = None) -> Inputs:
        """A file read (nothing if it does not exist, or is a URL); ``of``: the input it belongs to."""
        if _is_remote(path):
            return self
        path = Path(path)
        with contextlib.suppress(OSError):
            st = path.stat()
            if path.is_dir():
                self._folders.append((path.resolve(), Path(of or path)))
            else:
                self._files.setdefault((st.st_dev, st.st_ino), (path, Path(of or path)))
        return self

    def add_raster(self, path: str | os.PathLike[str]) -> Inputs:
        """A raster and the files GDAL reads for it, and its QGIS style."""
        if _is_remote(path):
            return self
        self.add(path)
        for extra in raster_files(path):
            self.add(extra, of=path)
        self.add(Path(path).with_suffix(".qml"), of=path)
        return self

    def add_artifact(self, path: str | os.PathLike[str]) -> Inputs:
        """A model or engine file with its spec sidecar and weights (``.onnx.data``, OpenVINO's ``.bin``)."""
        from segbench.spec import sidecar_path

        path = Path(path)
        self.add(path)
        for extra in (sidecar_path(path), path.with_name(path.name + ".data"), path.with_suffix(".bin")):
            self.add(extra, of=path)
        return self

    def add_folder(self, path: str | os.PathLike[str]) -> Inputs:
        """A folder read as a whole (a dataset): no output may lie in it, nor replace it."""
        return self.add(path)

    def refuse(self, outputs: Iterable[str | os.PathLike[str] | None]) -> None:
        """One sentence, before any work, when one of ``outputs`` would replace an input."""
        for out in outputs:
            if out is None or _is_remote(out):
                continue
            if (clash := self.replaced_by(Path(out))) is not None:
                file, given = clash
                part = "" if _same_path(file, given) else f" ({file} belongs to it)"
                raise OutputError(f"Output {out} would replace the input {given}{part}; "
                                  "choose another output name.")

    def refuse_folder(self, folder: str | os.PathLike[str]) -> None:
        """One sentence when the output ``folder`` (written into, partly cleared) is, holds or lies
        in an input."""
        root = _resolved(Path(folder))
        inputs = [(file, given, False) for file, given in self._files.values()]
        inputs += [(path, given, True) for path, given in self._folders]
        for path, given, is_folder in inputs:
            inner = _resolved(path)
            if inner == root or root in inner.parents or (is_folder and inner in root.parents):
                raise OutputError(f"Output folder {folder} overlaps the input {given}; choose an "
                                  "output folder apart from the inputs.")

    def replaced_by(self, out: Path) -> tuple[Path, Path] | None:
        """``(input file, the input it belongs to)`` that writing ``out`` would replace, if any."""
        try:
            st = out.stat()
        except OSError:  # nothing there yet: nothing to replace, unless it lies in an input folder
            st = None
        if st is not None and (hit := self._files.get((st.st_dev, st.st_ino))):
            return hit
        target = _resolved(out)
        for folder, given in self._folders:
            if target == folder or folder in target.parents:
                return folder, given
        return None


def refuse_shared(outputs: Iterable[tuple[Path, Iterable[str | os.PathLike[str]]]]) -> None:
    """One sentence when two outputs would write the same file (two scenes of one name into one
    folder, a label raster's QGIS style and its polygons'); ``outputs``: each output with the files
    it is written as."""
    owner: dict[Path, Path] = {}
    for name, files in outputs:
        for file in files:
            key = _resolved(Path(file))
            if key in owner:
                if owner[key] == name:
                    raise OutputError(f"Two inputs would both be written to {file} (scenes of the same "
                                      "name?); segment them into separate output folders.")
                raise OutputError(f"Outputs {owner[key]} and {name} would both write {file}; give them "
                                  "names that differ by more than their extension.")
            owner[key] = name


def raster_files(path: str | os.PathLike[str]) -> list[str]:
    """The files GDAL reads for a raster (the file, sidecars, overviews, a VRT's sources); none if
    it cannot be opened (the command's own reading then says why)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as ds:
            return list(ds.files)
    except (RasterioIOError, OSError):
        return []


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same_path(a: Path, b: Path) -> bool:
    return _resolved(a) == _resolved(b)


def _is_remote(path) -> bool:
    from segbench.raster import is_url

    return is_url(str(path))
