"""Many scenes: scene files found in folders, and one label file per scene."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from segbench.engines.base import Engine
from segbench.errors import InputError
from segbench.tiler.pipeline import SegmentResult, segment

SCENE_SUFFIXES = (".tif", ".tiff", ".vrt")


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
