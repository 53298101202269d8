"""Many scenes: scene files found in folders, and the batch size to run them at."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from segbench.engines.base import Engine
from segbench.engines.batchsize import BatchChoice, candidates_for, choose_batch
from segbench.errors import InputError
from segbench.files import check_output
from segbench.raster import check_bands, is_url, open_raster, sample_tiles, scene_info
from segbench.spec import ModelSpec
from segbench.tiler.pipeline import SegmentResult, segment
from segbench.tiler.windows import plan_windows, stride_for

SCENE_SUFFIXES = (".tif", ".tiff", ".vrt")


def expand_scenes(paths: Iterable[str | os.PathLike[str]]) -> list[Path | str]:
    """Scenes from files, folders (``*.tif``, ``*.tiff``, ``*.vrt`` inside) and URLs (kept as given)."""
    scenes: list[Path | str] = []
    for given in paths:
        if is_url(given):
            scenes.append(given)
            continue
        p = Path(given)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in SCENE_SUFFIXES)
            if not found:
                raise InputError(f"Folder {p} holds no .tif, .tiff or .vrt scenes.")
            scenes.extend(found)
        else:
            scenes.append(p)
    return scenes


def scene_stem(scene: Path | str) -> str:
    """A scene's name without its extension, for the files made from it (a URL's last part)."""
    if is_url(scene):
        return PurePosixPath(urlparse(str(scene)).path).stem or "scene"
    return Path(scene).stem


@dataclass(frozen=True)
class SceneOutput:
    """The rasters one scene is segmented into."""

    scene: Path | str
    labels: Path
    confidence: Path | None = None
    probabilities: Path | None = None

    @property
    def rasters(self) -> list[Path]:
        return [p for p in (self.labels, self.confidence, self.probabilities) if p is not None]


def plan_outputs(paths: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 confidence: bool = False, probabilities: bool = False) -> list[SceneOutput]:
    """The outputs of each scene of ``paths`` (files, folders, VRTs, URLs); nothing is created.

    ``out`` is the label file when there is one scene and it ends in .tif;
    otherwise a folder that receives ``<scene>.labels.tif`` per scene. Beside
    each label file ``x.tif`` go ``x.confidence.tif`` and ``x.probabilities.tif``
    where asked.
    """
    scenes = expand_scenes(paths)
    out = Path(out)
    if len(scenes) == 1 and out.suffix.lower() in (".tif", ".tiff"):
        labels = [out]
    else:
        labels = [out / f"{scene_stem(scene)}.labels.tif" for scene in scenes]
    return [SceneOutput(scene, dest,
                        dest.with_name(f"{dest.stem}.confidence.tif") if confidence else None,
                        dest.with_name(f"{dest.stem}.probabilities.tif") if probabilities else None)
            for scene, dest in zip(scenes, labels, strict=True)]


def check_destination(outputs: Sequence[SceneOutput], out: str | os.PathLike[str]) -> None:
    """Before any work, one sentence (:func:`segbench.files.check_output`) where an output cannot be
    written: ``out`` as the folder the outputs go to (several scenes, or a name not ending in .tif:
    no file there or above it), each raster as a file (no folder there, no model or engine, its
    folder existing or made with ``out``)."""
    folder = any(o.labels != Path(out) for o in outputs)
    if folder:
        check_output(out, folder=True, create=True,  # a name not ending in .tif: a folder of labels
                     advice="give a folder, or a name ending in .tif for one scene")
    for o in outputs:
        for raster in o.rasters:
            check_output(raster, create=folder)


def make_folders(outputs: Sequence[SceneOutput], out: str | os.PathLike[str]) -> None:
    """Create ``out`` where it is the folder the outputs go to (several scenes, or a name not ending
    in .tif); a label file's own folder must exist."""
    check_destination(outputs, out)
    if any(o.labels != Path(out) for o in outputs):
        Path(out).mkdir(parents=True, exist_ok=True)


def segment_many(
    paths: Sequence[str | os.PathLike[str]],
    engine: Engine,
    out: str | os.PathLike[str],
    *,
    confidence: bool = False,
    probabilities: bool = False,
    progress: bool = True,
    on_scene: Callable[[SegmentResult], None] | None = None,
    resample: bool = False,
    **options,
) -> list[SegmentResult]:
    """Segment several scenes (files, folders, VRTs) into ``out`` (see :func:`plan_outputs`).

    ``on_scene`` is called with each scene's result as soon as it is done;
    ``resample`` runs each scene at the model's GSD (:mod:`.resample`); the
    other ``options`` are :func:`~segbench.tiler.segment`'s (``on_progress``
    among them, called for each scene's windows).
    """
    from segbench.tiler.resample import segment_resampled

    run = segment_resampled if resample else segment
    planned = plan_outputs(paths, out, confidence=confidence, probabilities=probabilities)
    make_folders(planned, out)
    results = []
    for o in planned:
        results.append(run(o.scene, engine, o.labels, confidence=o.confidence,
                           probabilities=o.probabilities, progress=progress, **options))
        if on_scene is not None:
            on_scene(results[-1])
    return results


def auto_batch(artifact: str | os.PathLike[str], scenes: Sequence[str | os.PathLike[str]],
               overlap: int | None = None, stride: int | None = None,
               spec: ModelSpec | None = None) -> BatchChoice:
    """``--batch auto``: the batch the engine at ``artifact`` runs these scenes fastest at.

    Measured on real windows of the first scene, as many as the largest
    candidate, with no candidate larger than that scene's window count (a
    batch the scene cannot fill would only run padding), and for no longer
    than a share of the time all the scenes' windows take
    (:data:`segbench.engines.batchsize.SWEEP_SHARE`). ``spec``: the engine's, where the caller
    has read it already (else read from beside ``artifact``).
    """
    spec = spec if spec is not None else ModelSpec.load(artifact)
    paths = expand_scenes(scenes)
    step = stride_for(spec.tile, overlap, stride, default=spec.stride)
    counts = []
    for path in paths:
        with open_raster(path) as ds:
            info = scene_info(ds)
        if not counts:
            check_bands(info, spec)
        counts.append(len(plan_windows(info.height, info.width, spec.tile, step)))
    candidates = candidates_for(spec)
    tiles = sample_tiles([paths[0]], spec, count=max(candidates), seed=0)
    return choose_batch(artifact, tiles, max_batch=counts[0], candidates=candidates, work=sum(counts),
                        spec=spec)
