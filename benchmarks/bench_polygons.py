"""Polygonizing label rasters: time and peak memory, streamed in row bands, against the scene's size.

A label raster of synthetic town blocks (the synthetic dataset's own labels,
1024^2 tiles shifted at random, six classes, tiled and compressed) at each
size; ``segbench.geo.vector.polygonize`` into a GeoPackage, each run in a
fresh process: seconds, polygons, and the process's peak resident memory
(the kernel's high-water mark), with the label raster's own size beside it.
With ``--whole`` the largest size that fits also runs rasterio's
whole-array ``shapes`` (what a naive tool does) for the memory it needs.

    python benchmarks/bench_polygons.py [--sizes 5000,20000] [--whole 5000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from segbench.bench.memory import PeakMemory, run_in_child

CLASSES = ["impervious", "building", "low_vegetation", "tree", "car", "clutter"]


def make_labels(path: Path, size: int) -> Path:
    """A size^2 uint8 label GeoTIFF of shifted synthetic 1024^2 label tiles."""
    if path.exists():
        return path
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from segbench.train.synth import synth_scene

    _, labels = synth_scene(1024, np.random.default_rng(0))
    labels = np.asarray(labels, np.uint8)
    rng = np.random.default_rng(1)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                       nodata=255, crs="EPSG:32633", transform=from_origin(368000, 5808000, 0.3, 0.3),
                       tiled=True, blockxsize=512, blockysize=512, compress="lzw", BIGTIFF="YES") as ds:
        for row in range(0, size, 1024):
            for col in range(0, size, 1024):
                h, w = min(1024, size - row), min(1024, size - col)
                piece = np.roll(labels, int(rng.integers(0, 1024)), axis=1)[:h, :w]
                ds.write(piece, 1, window=Window(col, row, w, h))
    tmp.rename(path)
    return path


def streamed(labels: str, dest: str) -> dict:
    """Child process: segbench's polygonize."""
    from segbench.geo.vector import polygonize

    with PeakMemory() as mem:
        result = polygonize(labels, dest, CLASSES)
    return {"seconds": result.seconds, "polygons": result.polygons, "peak": mem.peak_rss_bytes}


def whole(labels: str) -> dict:
    """Child process: rasterio's shapes over the whole array at once."""
    import rasterio
    from rasterio.features import shapes

    with PeakMemory() as mem:
        start = time.perf_counter()
        with rasterio.open(labels) as ds:
            array = ds.read(1)
            count = sum(1 for _ in shapes(array, mask=array != 255, connectivity=4, transform=ds.transform))
    return {"seconds": time.perf_counter() - start, "polygons": count, "peak": mem.peak_rss_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000")
    parser.add_argument("--whole", type=int, default=5000, help="also run the whole-array way at this size")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segbench-polygons")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{'size':>7} {'run':<20} {'polygons':>9} {'seconds':>8} {'peak MB':>8}  labels MB")
    for size in map(int, args.sizes.split(",")):
        labels = make_labels(args.workdir / f"labels_{size}.tif", size)
        dest = args.workdir / f"regions_{size}.gpkg"
        dest.unlink(missing_ok=True)
        runs = [("segbench (row bands)", run_in_child(streamed, str(labels), str(dest)))]
        if size == args.whole:
            runs.append(("whole array", run_in_child(whole, str(labels))))
        for name, r in runs:
            print(f"{size:>7} {name:<20} {r['polygons']:>9} {r['seconds']:>8.1f} {r['peak'] / 2**20:>8.0f}  "
                  f"{size * size / 2**20:.0f}")


if __name__ == "__main__":
    main()
