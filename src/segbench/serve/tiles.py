"""Map tiles of labels, the model run on demand on the scene's own grid.

A tile ``z/x/y`` covers a rectangle of the scene's pixels; every window of the scene's full
window plan (the engine's tile size and overlap, as ``segment`` plans them) that touches that
rectangle is read, run through the dynamic batcher, and blended with the tiler's own weights
and accumulation (:func:`segbench.tiler.blend.axis_weights`,
:func:`segbench.tiler.accumulate.blend`, the native argmax). So a pixel's label is the one
``segment`` gives it, and tiles have no seams. The labels are then warped to the Web Mercator
tile with nearest neighbour and drawn in the class palette (255, nodata, transparent).
"""

from __future__ import annotations

import asyncio
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from segbench.errors import InputError
from segbench.spec import IGNORE_INDEX, ModelSpec
from segbench.tiler.windows import Window, axis_starts

TILE_PX = 256
#: the most model pixels one tile may need (bounds a request's work: 64 windows of 512 px)
MAX_MODEL_PIXELS = 64 * 512 * 512
#: tiles rendered at once; more wait (bounds the memory of a burst of requests)
MAX_RENDERS = 32


class TileNotFound(InputError):
    """No tile there: outside the scene, or a zoom the server does not run the model at."""


@dataclass(frozen=True)
class Plan:
    """The windows one tile needs and the span of the scene they cover (rows, columns)."""

    windows: list[Window]
    span: Window


class CoarseZoom(TileNotFound):
    """A zoom coarser than the model's: served from a finished job's labels, where there is one."""


def mercator_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """The tile's (left, bottom, right, top) in EPSG:3857."""
    import morecantile

    b = morecantile.tms.get("WebMercatorQuad").xy_bounds(x, y, z)
    return b.left, b.bottom, b.right, b.top


def check_tile(scene, z: int, x: int, y: int) -> None:
    """404 (TileNotFound) for a zoom outside the scene's range or a tile index off the map."""
    if z < scene.minzoom:
        raise CoarseZoom(f"Zoom {z} is coarser than this scene's model zooms ({scene.minzoom}-"
                           f"{scene.maxzoom}); zoom in, or run a job (POST /jobs) for the whole scene.")
    if z > scene.maxzoom:  # before 2**z: a huge zoom stops here
        raise TileNotFound(f"Zoom {z} is finer than this scene's zooms ({scene.minzoom}-{scene.maxzoom}).")
    if not (0 <= x < 2**z and 0 <= y < 2**z):
        raise TileNotFound(f"Tile {z}/{x}/{y} is off the map.")


def pixel_span(scene, bounds) -> Window:
    """The scene's pixels under a Web Mercator rectangle (one pixel of margin); TileNotFound if none."""
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds("EPSG:3857", scene.crs, *bounds, densify_pts=21)
    inv = ~scene.transform
    c0, r0 = inv * (left, top)
    c1, r1 = inv * (right, bottom)
    rows = sorted((r0, r1))
    cols = sorted((c0, c1))
    row0, row1 = max(math.floor(rows[0]) - 1, 0), min(math.ceil(rows[1]) + 1, scene.height)
    col0, col1 = max(math.floor(cols[0]) - 1, 0), min(math.ceil(cols[1]) + 1, scene.width)
    if row1 <= row0 or col1 <= col0:
        raise TileNotFound("This tile is outside the scene.")
    return Window(row0, col0, row1 - row0, col1 - col0)


def plan_tile(scene, spec: ModelSpec, stride: int, area: Window) -> Plan:
    """Every window of the scene's plan that touches ``area``, and the span they cover."""
    tile = spec.tile
    rows = [r for r in axis_starts(scene.height, tile, stride) if r < area.bottom and r + tile > area.row]
    cols = [c for c in axis_starts(scene.width, tile, stride) if c < area.right and c + tile > area.col]
    if len(rows) * len(cols) * tile * tile > MAX_MODEL_PIXELS:
        raise TileNotFound("This tile needs too many model windows; zoom in.")
    span = Window(rows[0], cols[0], min(rows[-1] + tile, scene.height) - rows[0],
                  min(cols[-1] + tile, scene.width) - cols[0])
    return Plan([Window(r, c, tile, tile) for r in rows for c in cols], span)


class TileRenderer:
    """Labels of map tiles for one engine: reads, the batcher, the tiler's blending, the warp."""

    def __init__(self, spec: ModelSpec, batcher, stride: int, blend: str, engine_name: str) -> None:
        self.spec, self.batcher, self.stride, self.blend = spec, batcher, stride, blend
        self.engine_name = engine_name
        self.palette = palette_chunks(spec)
        self.grey = grey_chunks()
        self.pixels = 0  # model pixels run, for the metrics
        self._renders = asyncio.Semaphore(MAX_RENDERS)

    async def render(self, scene, z: int, x: int, y: int, confidence: bool = False) -> bytes:
        """The PNG of tile ``z/x/y`` of ``scene``: labels in the palette, or with ``confidence`` the
        max class probability as grey (0..255, the tiler's confidence raster; transparent nodata)."""
        check_tile(scene, z, x, y)
        async with self._renders:
            return await self._render(scene, z, x, y, confidence)

    async def _render(self, scene, z: int, x: int, y: int, confidence: bool) -> bytes:
        bounds = mercator_bounds(z, x, y)
        area = await asyncio.to_thread(pixel_span, scene, bounds)
        plan = plan_tile(scene, self.spec, self.stride, area)
        tiles, valids = await asyncio.to_thread(read_windows, scene, self.spec, plan.windows)
        todo = [i for i, v in enumerate(valids) if v.any()]
        futures = self.batcher.submit_many([tiles[i] for i in todo]) if todo else []
        logits = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        self.pixels += len(todo) * self.spec.tile ** 2
        outputs = dict(zip(todo, logits, strict=True))
        labels = await asyncio.to_thread(self.blend_windows, scene, plan, outputs, valids, confidence)
        nodata = 0 if confidence else IGNORE_INDEX  # a valid pixel's confidence is at least 255 / classes
        tile = await asyncio.to_thread(warp_to_tile, scene, plan.span, labels, bounds, nodata)
        return encode_png(tile, self.grey if confidence else self.palette)

    def blend_windows(self, scene, plan: Plan, outputs: dict, valids: list[np.ndarray],
                      confidence: bool = False) -> np.ndarray:
        """Blend the windows' logits over the plan's span with the tiler's weights; uint8 labels (or
        with ``confidence``, the tiler's uint8 max probability, 0 where nodata)."""
        from segbench import _native
        from segbench.tiler.accumulate import blend
        from segbench.tiler.blend import axis_weights

        tile, span = self.spec.tile, plan.span
        rows = axis_starts(scene.height, tile, self.stride)
        cols = axis_starts(scene.width, tile, self.stride)
        wy = dict(zip(rows, axis_weights(rows, tile, scene.height, self.blend), strict=True))
        wx = dict(zip(cols, axis_weights(cols, tile, scene.width, self.blend), strict=True))
        acc = np.zeros((self.spec.num_classes, span.height, span.width), np.float32)
        wsum = np.zeros((span.height, span.width), np.float32)
        valid = np.zeros((span.height, span.width), bool)
        for i, window in enumerate(plan.windows):
            if i not in outputs:
                continue
            y, x = window.row - span.row, window.col - span.col
            h, w = min(tile, scene.height - window.row), min(tile, scene.width - window.col)
            blend(acc, wsum, np.ascontiguousarray(outputs[i][:, :h, :w]), wy[window.row][:h],
                  wx[window.col][:w], y, x, 1, self.engine_name, window)
            valid[y:y + h, x:x + w] |= valids[i][:h, :w]
        result = _native.argmax_labels(acc, wsum, span.height, valid, IGNORE_INDEX, confidence, 1)
        return np.where(result[0] == IGNORE_INDEX, 0, result[1]).astype(np.uint8) if confidence else result


def read_windows(scene, spec: ModelSpec, windows: list[Window]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each window's pixels and validity, as the tiler's reader reads them: the rectangle under all
    the windows is read once (padded where a window overhangs a small scene) and sliced."""
    from segbench.raster import open_raster, read_window

    t = spec.tile
    row0, col0 = min(w.row for w in windows), min(w.col for w in windows)
    height, width = max(w.row for w in windows) + t - row0, max(w.col for w in windows) + t - col0
    with open_raster(scene.path) as ds:
        pixels, valid = read_window(ds, row0, col0, height, width, spec.bands)
    tiles = [np.ascontiguousarray(pixels[:, w.row - row0:w.row - row0 + t, w.col - col0:w.col - col0 + t])
             for w in windows]
    valids = [valid[w.row - row0:w.row - row0 + t, w.col - col0:w.col - col0 + t] for w in windows]
    return tiles, valids


def warp_to_tile(scene, span: Window, labels: np.ndarray, bounds, nodata: int = IGNORE_INDEX) -> np.ndarray:
    """``labels`` (the scene's grid over ``span``) on the 256 px Web Mercator tile, nearest neighbour."""
    from rasterio.transform import from_bounds
    from rasterio.warp import Resampling, reproject

    out = np.full((TILE_PX, TILE_PX), nodata, np.uint8)
    src_transform = scene.transform * scene.transform.translation(span.col, span.row)
    reproject(labels, out, src_transform=src_transform, src_crs=scene.crs, src_nodata=nodata,
              dst_transform=from_bounds(*bounds, TILE_PX, TILE_PX), dst_crs="EPSG:3857",
              dst_nodata=nodata, resampling=Resampling.nearest)
    return out


def palette_chunks(spec: ModelSpec) -> tuple[bytes, bytes]:
    """The PNG palette (PLTE) and transparency (tRNS) for the classes; index 255 transparent."""
    colours = np.zeros((256, 3), np.uint8)
    for i, rgb in enumerate(spec.palette[:255]):
        colours[i] = rgb
    alpha = np.full(256, 255, np.uint8)
    alpha[IGNORE_INDEX] = 0
    return colours.tobytes(), alpha.tobytes()


def grey_chunks() -> tuple[bytes, bytes]:
    """A grey ramp palette whose index 0 (no confidence: nodata) is transparent."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    alpha = np.full(256, 255, np.uint8)
    alpha[0] = 0
    return ramp.tobytes(), alpha.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(labels: np.ndarray, palette: tuple[bytes, bytes]) -> bytes:
    """An 8-bit paletted PNG of ``labels`` (H, W) uint8."""
    h, w = labels.shape
    raw = np.zeros((h, w + 1), np.uint8)  # filter byte 0 per row
    raw[:, 1:] = labels
    header = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"PLTE", palette[0])
            + _chunk(b"tRNS", palette[1]) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + _chunk(b"IEND", b""))


def decode_png_indices(data: bytes) -> np.ndarray:
    """The palette indices of a PNG written by :func:`encode_png` (for tests and clients)."""
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h = size
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w + 1)
    return raw[:, 1:].copy()


def render_imagery(scene, spec: ModelSpec, z: int, x: int, y: int) -> bytes:
    """The scene's own pixels on tile ``z/x/y`` as an RGBA PNG (the model's first three bands,
    stretched by the spec's mean +- 2 std, the same on every tile; transparent outside the scene)."""
    from rasterio.transform import from_bounds
    from rasterio.warp import Resampling, reproject

    from segbench.raster import open_raster, read_window

    check_tile(scene, z, x, y)
    bounds = mercator_bounds(z, x, y)
    span = pixel_span(scene, bounds)
    bands = [spec.bands[min(i, len(spec.bands) - 1)] for i in range(3)]
    with open_raster(scene.path) as ds:
        pixels, valid = read_window(ds, span.row, span.col, span.height, span.width, bands)
    mean = np.array([spec.mean[spec.bands.index(b)] for b in bands], np.float32)[:, None, None]
    std = np.array([spec.std[spec.bands.index(b)] for b in bands], np.float32)[:, None, None]
    src = np.clip((pixels - mean) / (4 * std) + 0.5, 0, 1) * 254 + 1  # 0: nodata
    src = np.where(valid, src, 0).astype(np.uint8)
    out = np.zeros((3, TILE_PX, TILE_PX), np.uint8)
    reproject(src, out, src_transform=scene.transform * scene.transform.translation(span.col, span.row),
              src_crs=scene.crs, src_nodata=0, dst_transform=from_bounds(*bounds, TILE_PX, TILE_PX),
              dst_crs="EPSG:3857", dst_nodata=0, resampling=Resampling.nearest)
    alpha = np.where(out.any(axis=0), 255, 0).astype(np.uint8)
    return encode_rgba_png(np.concatenate([out, alpha[None]]))


def encode_rgba_png(rgba: np.ndarray) -> bytes:
    """An 8-bit RGBA PNG of ``rgba`` (4, H, W) uint8."""
    _, h, w = rgba.shape
    raw = np.zeros((h, w * 4 + 1), np.uint8)
    raw[:, 1:] = np.moveaxis(rgba, 0, -1).reshape(h, w * 4)
    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + _chunk(b"IEND", b""))


def render_from_labels(labels, palette: tuple[bytes, bytes], z: int, x: int, y: int) -> bytes:
    """Tile ``z/x/y`` of a finished label COG, read by rio-tiler in Web Mercator (nearest neighbour,
    from the COG's overviews at coarse zooms); TileNotFound outside it."""
    from rio_tiler.errors import TileOutsideBounds
    from rio_tiler.io import Reader

    with Reader(str(labels)) as cog:
        try:
            img = cog.tile(x, y, z, tilesize=TILE_PX, indexes=1, resampling_method="nearest",
                           reproject_method="nearest")
        except TileOutsideBounds:
            raise TileNotFound("This tile is outside the scene.") from None
    return encode_png(img.array[0].filled(IGNORE_INDEX).astype(np.uint8), palette)
