"""Synthetic aerial scenes of the six ISPRS classes, deterministic from a seed.

Each scene is a small town block: a road grid (impervious surfaces) with cars
on it, buildings in the blocks, lawns (low vegetation), tree crowns and
patches of clutter. Every class has its own colour family and texture with
per-object variation, illumination gradients and sensor noise, so a network
has to learn colour *and* shape, not a lookup table. Scenes are written as
GeoTIFFs in a projected CRS (UTM 33N, like Potsdam) at a sub-metre pixel size,
with a label GeoTIFF beside each image.

Layout written by :func:`synthesize_dataset`::

    root/dataset.json                      classes, palette, bands, splits
    root/{train,val,test}/images/NAME.tif  image scenes
    root/{train,val,test}/labels/NAME.tif  uint8 labels, 255 = ignore
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin

from segbench.errors import InputError
from segbench.files import atomic_output
from segbench.raster import write_raster
from segbench.spec import IGNORE_INDEX, ISPRS_CLASSES, ISPRS_PALETTE

IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, CLUTTER = range(6)
SYNTH_CRS = CRS.from_epsg(32633)
PIXEL_SIZE = 0.3  # metres

# Mean RGB and NIR reflectance (0..1) per class, and the spread between objects.
_CLASS_RGBN = {
    IMPERVIOUS: ((0.55, 0.55, 0.56, 0.30), 0.06),
    BUILDING: ((0.62, 0.36, 0.30, 0.35), 0.14),
    LOW_VEG: ((0.45, 0.62, 0.30, 0.75), 0.05),
    TREE: ((0.16, 0.34, 0.14, 0.85), 0.04),
    CAR: ((0.50, 0.50, 0.55, 0.40), 0.30),
    CLUTTER: ((0.58, 0.48, 0.34, 0.40), 0.08),
}
# Amplitude and grain (pixels) of each class's texture.
_TEXTURE = {
    IMPERVIOUS: (0.03, 3),
    BUILDING: (0.02, 6),
    LOW_VEG: (0.06, 12),
    TREE: (0.10, 3),
    CAR: (0.01, 2),
    CLUTTER: (0.08, 4),
}


BAND_COUNTS = (3, 4)  # RGB, RGB+NIR
DTYPES = ("uint8", "uint16")


@dataclass(frozen=True)
class SynthOptions:
    """What to generate: sizes, counts, bands (3 = RGB, 4 = RGB+NIR), pixel type."""

    train: int = 6
    val: int = 1
    test: int = 1
    size: int = 512
    test_size: int = 1024
    bands: int = 3
    dtype: str = "uint8"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bands not in BAND_COUNTS:
            raise InputError("Synthetic scenes have 3 (RGB) or 4 (RGB+NIR) bands.")
        if self.dtype not in DTYPES:
            raise InputError("Synthetic scenes are uint8 or uint16.")
        if min(self.size, self.test_size) < 64:
            raise InputError("Synthetic scenes must be at least 64 pixels wide.")
        if self.train < 1:
            raise InputError("Generate at least one training scene.")


def synth_scene(size: int, rng: np.random.Generator, bands: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image float32 (bands, size, size) in 0..1, labels uint8 (size, size))``."""
    labels = np.full((size, size), LOW_VEG, dtype=np.uint8)
    roads = _draw_roads(labels, rng)
    _draw_buildings(labels, rng)
    _draw_blobs(labels, rng, TREE, count=size * size // 9000, radius=(6, 22), on=(LOW_VEG,))
    _draw_blobs(labels, rng, CLUTTER, count=size * size // 40000, radius=(5, 14), on=(LOW_VEG,))
    _draw_cars(labels, rng, roads)
    image = _paint(labels, rng, bands)
    return image, labels


def _draw_roads(labels: np.ndarray, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    size = labels.shape[0]
    roads = []
    for axis in ("h", "v"):
        pos = int(rng.integers(0, size // 3))
        while pos < size:
            width = int(rng.integers(14, 30))
            if axis == "h":
                labels[pos : pos + width, :] = IMPERVIOUS
            else:
                labels[:, pos : pos + width] = IMPERVIOUS
            roads.append((axis, pos, width))
            pos += width + int(rng.integers(size // 4, size // 2))
    return roads


def _draw_buildings(labels: np.ndarray, rng: np.random.Generator) -> None:
    size = labels.shape[0]
    for _ in range(size * size // 12000):
        h, w = (int(v) for v in rng.integers(24, 110, size=2))
        y, x = (int(v) for v in rng.integers(-h // 2, size, size=2))
        region = labels[max(y, 0) : y + h, max(x, 0) : x + w]
        # Buildings stand in the blocks: never on roads, rarely on other buildings.
        if region.size and (region == IMPERVIOUS).mean() < 0.05 and (region == BUILDING).mean() < 0.3:
            region[region != IMPERVIOUS] = BUILDING
            # A paved yard or driveway beside some buildings.
            if rng.random() < 0.4:
                yard = labels[max(y + h, 0) : y + h + 10, max(x, 0) : x + w // 2]
                yard[yard == LOW_VEG] = IMPERVIOUS


def _draw_blobs(
    labels: np.ndarray,
    rng: np.random.Generator,
    cls: int,
    count: int,
    radius: tuple[int, int],
    on: tuple[int, ...],
) -> None:
    size = labels.shape[0]
    for _ in range(max(count, 1)):
        r = int(rng.integers(*radius))
        cy, cx = (int(v) for v in rng.integers(0, size, size=2))
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, size), max(cx - r, 0), min(cx + r + 1, size)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        wobble = 1.0 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * rng.integers(2, 6))
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r * wobble) ** 2
        region = labels[y0:y1, x0:x1]
        region[disk & np.isin(region, on)] = cls


def _draw_cars(labels: np.ndarray, rng: np.random.Generator, roads) -> None:
    size = labels.shape[0]
    for axis, pos, width in roads:
        for _ in range(int(rng.integers(2, 3 + size // 100))):
            along = int(rng.integers(0, size - 16))
            lane = pos + int(rng.integers(2, max(width - 8, 3)))
            length, breadth = int(rng.integers(12, 16)), 6
            if axis == "h":
                region = labels[lane : lane + breadth, along : along + length]
            else:
                region = labels[along : along + length, lane : lane + breadth]
            region[region == IMPERVIOUS] = CAR


def _smooth_noise(rng: np.random.Generator, size: int, grain: int) -> np.ndarray:
    """Zero-mean noise with features about ``grain`` pixels wide (bilinear upsampling)."""
    n = size // grain + 2
    coarse = rng.standard_normal((n, n)).astype(np.float32)
    coords = np.arange(size, dtype=np.float32) / grain
    i0 = coords.astype(np.int64)
    f = coords - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _paint(labels: np.ndarray, rng: np.random.Generator, bands: int) -> np.ndarray:
    size = labels.shape[0]
    image = np.zeros((bands, size, size), dtype=np.float32)
    # Per-object colour: label connected pieces approximately by coarse cells.
    cell_id = (np.arange(size)[:, None] // 48) * 1000 + (np.arange(size)[None, :] // 48)
    for cls, (base, spread) in _CLASS_RGBN.items():
        mask = labels == cls
        if not mask.any():
            continue
        amp, grain = _TEXTURE[cls]
        texture = amp * _smooth_noise(rng, size, grain)
        cells = np.unique(cell_id[mask])
        offsets = rng.normal(0.0, spread, size=(cells.size, 4)).astype(np.float32)
        if cls == CAR:  # cars: vivid, independent colours
            offsets = rng.uniform(-0.45, 0.45, size=(cells.size, 4)).astype(np.float32)
        idx = np.searchsorted(cells, cell_id[mask])
        for b in range(bands):
            image[b][mask] = base[b] + offsets[idx, b if cls == CAR else 0] * (
                1.0 if cls in (CAR, BUILDING) else 0.5
            ) + texture[mask]
    # Shadows cast south-east of buildings and trees, illumination gradient, sensor noise.
    tall = (labels == BUILDING) | (labels == TREE)
    shadow = np.zeros_like(tall)
    shadow[6:, 6:] = tall[:-6, :-6] & ~tall[6:, 6:]
    image[:, shadow] *= 0.6
    gradient = 1.0 + 0.08 * _smooth_noise(rng, size, max(size // 2, 8))
    image *= gradient[None]
    image += rng.normal(0.0, 0.015, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def synthesize_dataset(root: str | Path, options: SynthOptions = SynthOptions()) -> Path:
    """Write a train/val/test scene set under ``root`` and return ``root``."""
    from segbench.files import check_output

    root = Path(root)
    check_output(root, folder=True, create=True)
    rng = np.random.default_rng(options.seed)
    scale = 255.0 if options.dtype == "uint8" else 4095.0  # uint16: 12-bit sensor range
    splits = {"train": (options.train, options.size), "val": (options.val, options.size),
              "test": (options.test, options.test_size)}
    cmap = {i: c for i, c in enumerate(ISPRS_PALETTE)}
    # Place scenes side by side in one UTM zone so each has its own footprint.
    origin_x, origin_y = 368_000.0, 5_808_000.0
    for split, (count, size) in splits.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, labels = synth_scene(size, rng, options.bands)
            pixels = np.round(image * scale).astype(options.dtype)
            transform = from_origin(origin_x, origin_y, PIXEL_SIZE, PIXEL_SIZE)
            origin_x += size * PIXEL_SIZE + 30.0
            name = f"{split}_{i:03d}.tif"
            write_raster(root / split / "images" / name, pixels, crs=SYNTH_CRS, transform=transform)
            write_raster(root / split / "labels" / name, labels, crs=SYNTH_CRS,
                         transform=transform, nodata=IGNORE_INDEX, colormap=cmap)
    meta = {
        "classes": list(ISPRS_CLASSES),
        "palette": [list(c) for c in ISPRS_PALETTE],
        "ignore_index": IGNORE_INDEX,
        "bands": list(range(1, options.bands + 1)),
        "dtype": options.dtype,
        "source": f"segbench synth (seed {options.seed})",
    }
    with atomic_output(root / "dataset.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return root
