"""The scenes a server may read: GeoTIFFs found under its roots, and containment checks.

No request names a file directly: tiles address a scene by its id (looked up in the
catalogue), and a job's path is resolved (symlinks followed) and must lie inside a root.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from segbench.errors import InputError

SUFFIXES = (".tif", ".tiff")
#: the walk's bounds: folders deep under a root, and files looked at in all
MAX_DEPTH = 6
MAX_FILES = 10_000
#: seconds between rescans of the roots (a request for an unknown id rescans at most this often)
RESCAN_S = 10.0
#: zooms around the native one at which tiles run the model
ZOOMS_BELOW, ZOOMS_ABOVE = 1, 3
EARTH = 2 * math.pi * 6378137.0


class OutsideRootsError(InputError):
    """A path that resolves outside every scene root."""


@dataclass(frozen=True)
class Scene:
    """A served scene: its file, grid and where it is on the map."""

    id: str
    path: Path
    crs: object
    transform: object
    width: int
    height: int
    bands: int
    bounds: tuple[float, float, float, float]  # WGS84 west, south, east, north
    native_zoom: int
    stamp: tuple[int, int] = (0, 0)  # the file's size and modification time when it was read

    @property
    def minzoom(self) -> int:
        return max(self.native_zoom - ZOOMS_BELOW, 0)

    @property
    def maxzoom(self) -> int:
        return min(self.native_zoom + ZOOMS_ABOVE, 30)


def scene_id(path: Path) -> str:
    """A URL-safe id: the file's stem and a digest of its resolved path."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem)[:40].strip("-") or "scene"
    return f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def native_zoom(width: int, height: int, transform, crs) -> int:
    """The Web Mercator zoom whose pixels are closest to (not coarser than) the scene's."""
    from rasterio.warp import transform_bounds

    west, east = transform.c, transform.c + transform.a * width
    south, north = transform.f + transform.e * height, transform.f
    left, bottom, right, top = transform_bounds(crs, "EPSG:3857", west, south, east, north)
    res = max((right - left) / width, (top - bottom) / height)
    return max(0, min(30, math.ceil(math.log2(EARTH / (256 * res)))))


def open_scene(path: Path) -> Scene | None:
    """The scene at ``path``, or None where it is not a georeferenced raster."""
    import rasterio
    from rasterio.warp import transform_bounds

    try:
        with rasterio.open(path) as ds:
            if ds.crs is None or ds.transform.b or ds.transform.d:
                return None
            bounds = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
            zoom = native_zoom(ds.width, ds.height, ds.transform, ds.crs)
            return Scene(scene_id(path), path, ds.crs, ds.transform, ds.width, ds.height, ds.count,
                         tuple(bounds), zoom, _stamp(path))
    except Exception:  # noqa: BLE001  (an unreadable file is not served)
        return None


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_size, st.st_mtime_ns)


def walk(roots: list[Path]) -> list[Path]:
    """The *.tif / *.tiff files under ``roots`` (resolved, inside their root), bounded in depth and count."""
    found: list[Path] = []
    seen = 0
    for root in roots:
        base = len(root.parts)
        for folder, dirs, files in os.walk(root, followlinks=False):
            depth = len(Path(folder).parts) - base
            if depth >= MAX_DEPTH:
                dirs[:] = []
            dirs.sort()
            for name in sorted(files):
                seen += 1
                if seen > MAX_FILES:
                    return found
                if name.lower().endswith(SUFFIXES):
                    path = Path(folder, name).resolve()
                    if inside(path, roots) and path.is_file():
                        found.append(path)
    return found


def inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def resolve_under(text: str, roots: list[Path]) -> Path:
    """The file a job names (relative to a root, or absolute inside one), resolved; one sentence if it
    is not an existing file inside the roots."""
    if not text or "\x00" in text or len(text) > 4096:
        raise OutsideRootsError("Give the scene as a path under the server's scene roots.")
    given = Path(text)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    for candidate in candidates:
        try:
            path = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if inside(path, roots) and path.is_file():
            return path
    raise OutsideRootsError(f"No scene file {text!r} under the server's scene roots; give a path "
                            "relative to a root (GET /scenes lists them).")


class Catalog:
    """The scenes under the roots by id, rescanned at most every :data:`RESCAN_S` seconds."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(r).resolve() for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise InputError(f"Scene root {root} is not a folder; give folders of GeoTIFFs.")
        self._lock = threading.Lock()
        self._scenes: dict[str, Scene] = {}
        self._scanned = -math.inf
        self.scan()

    def scan(self) -> None:
        scenes, by_path = {}, {s.path: s for s in self._scenes.values()}
        for path in walk(self.roots):
            known = by_path.get(path)
            scene = known if known is not None and known.stamp == _stamp(path) else open_scene(path)
            if scene is not None:
                scenes[scene.id] = scene
        with self._lock:
            self._scenes, self._scanned = scenes, time.monotonic()

    def scenes(self) -> list[Scene]:
        if time.monotonic() - self._scanned > RESCAN_S:
            self.scan()
        return sorted(self._scenes.values(), key=lambda s: str(s.path))

    def get(self, sid: str) -> Scene | None:
        scene = self._scenes.get(sid)
        if scene is None and time.monotonic() - self._scanned > RESCAN_S:
            self.scan()
            scene = self._scenes.get(sid)
        return scene
