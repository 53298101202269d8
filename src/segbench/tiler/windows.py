"""Window planning: fixed-size windows over a scene, exactly as mmseg's ``slide_inference``.

Windows always have the engine's tile size. Along each axis they start every
``stride`` pixels; the last one is shifted back to end at the scene's border
(never past it), and scenes smaller than a tile get one window at 0 that
overhangs (the reader pads it, and the padding is masked out). Each window
is planned once, in row-major order, so finished rows can be flushed.
"""

from __future__ import annotations

from dataclasses import dataclass

from segbench.errors import UsageError


@dataclass(frozen=True)
class Window:
    """A rectangle of a scene in pixels, rows first: a window of the tiler's plan (tile-sized; it may
    overhang a scene smaller than a tile) or a chunk of a scene on Dask. rasterio's own ``Window``
    takes columns first (``col_off, row_off, width, height``); :meth:`to_rasterio` converts, so
    that the two orders never meet elsewhere."""

    row: int
    col: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.row + self.height

    @property
    def right(self) -> int:
        return self.col + self.width

    def intersection(self, other: Window) -> Window | None:
        """The part of this rectangle inside ``other``; None where they do not overlap."""
        row, col = max(self.row, other.row), max(self.col, other.col)
        bottom, right = min(self.bottom, other.bottom), min(self.right, other.right)
        if bottom <= row or right <= col:
            return None
        return Window(row, col, bottom - row, right - col)

    def to_rasterio(self):
        """The same rectangle as a ``rasterio.windows.Window``."""
        from rasterio.windows import Window as RasterioWindow

        return RasterioWindow(self.col, self.row, self.width, self.height)

    def __str__(self) -> str:
        return f"rows {self.row}-{self.bottom}, columns {self.col}-{self.right}"


def axis_starts(size: int, tile: int, stride: int) -> list[int]:
    """Window origins along one axis, as mmseg computes them (deduplicated, ascending)."""
    grids = max(size - tile + stride - 1, 0) // stride + 1
    starts = []
    for i in range(grids):
        start = max(min(i * stride + tile, size) - tile, 0)
        if not starts or start != starts[-1]:
            starts.append(start)
    return starts


def plan_windows(height: int, width: int, tile: int, stride: int) -> list[Window]:
    """All windows over a ``height`` x ``width`` scene, row-major."""
    check_stride(tile, stride)
    return [Window(r, c, tile, tile) for r in axis_starts(height, tile, stride)
            for c in axis_starts(width, tile, stride)]


def check_stride(tile: int, stride: int) -> None:
    if not 1 <= stride <= tile:
        raise UsageError(f"Stride {stride} must be between 1 and the tile size {tile}.")


def stride_for(tile: int, overlap: int | None = None, stride: int | None = None,
               default: int | None = None) -> int:
    """The stride from a user's ``overlap`` or ``stride``; without either, ``default`` (the
    model's own, ``spec.stride``) or else a quarter-tile overlap."""
    if overlap is not None and stride is not None:
        raise UsageError("Give either an overlap or a stride, not both.")
    if overlap is None and stride is None:
        stride = default
    if stride is None:
        overlap = tile // 4 if overlap is None else overlap
        if not 0 <= overlap < tile:
            raise UsageError(f"Overlap {overlap} must be at least 0 and less than the tile {tile}.")
        stride = tile - overlap
    check_stride(tile, stride)
    return stride
