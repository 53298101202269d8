"""Whole-scene segmentation at 5,000^2, 10,000^2 and 20,000^2 pixels: memory and speed.

Targets (issue 4): peak resident memory at 20,000^2 at most 1.5 GB and at
most 1.5x the peak at 5,000^2; the scene's wall time at most 1.15x the
engine's own inference time for the same windows. A naive whole-scene
accumulator is measured for comparison (at 20,000^2 its memory is projected:
it would need about 11 GB).

Each measurement runs in a fresh process so that peaks are not shared. On a
shared machine one run's ratio can move by 10% either way, so each scene is
measured ``--repeats`` times: the median ratio is printed with its range, and
the highest peak.

    python benchmarks/bench_tiler_scale.py [--sizes 5000,10000,20000] [--engine openvino-int8]
                                           [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from segbench.bench.memory import PeakMemory, run_in_child

TILE, OVERLAP, BATCH = 512, 128, 4


def make_scene(path: Path, size: int) -> Path:
    """A 3-band uint8 tiled, deflate-compressed GeoTIFF of synthetic town blocks."""
    if path.exists():
        return path
    from segbench.train.synth import synth_scene

    block, _ = synth_scene(1024, np.random.default_rng(0))
    block = np.round(block * 255).astype(np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                   crs=CRS.from_epsg(32633), transform=from_origin(368000, 5808000, 0.3, 0.3),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="YES")
    tmp = path.with_suffix(".part.tif")
    rng = np.random.default_rng(1)
    with rasterio.open(tmp, "w", **profile) as ds:
        for row in range(0, size, 1024):
            for col in range(0, size, 1024):
                h, w = min(1024, size - row), min(1024, size - col)
                piece = np.roll(block, int(rng.integers(0, 1024)), axis=2)[:, :h, :w]
                ds.write(piece, window=Window(col, row, w, h))
    tmp.rename(path)
    return path


def build_engine(workdir: Path, name: str) -> Path:
    from segbench.engines.registry import build
    from segbench.export.onnx import export_model
    from segbench.train.models import untrained_checkpoint

    onnx_path = workdir / "model.onnx"
    if not onnx_path.exists():
        checkpoint, _ = untrained_checkpoint("segformer-b0", workdir / "model.pth", tile=TILE)
        export_model(checkpoint, onnx_path)
    calib = np.random.default_rng(0).uniform(0, 255, (8, 3, TILE, TILE)).astype(np.float32)
    return build(onnx_path, name, workdir, calibration=calib)


def tile_pool(scene: str) -> list[np.ndarray]:
    """Eight distinct batches of the scene's first windows (so the engine is not timed on one)."""
    from segbench.raster import open_raster, read_window
    from segbench.tiler import plan_windows, stride_for

    with open_raster(scene) as ds:
        windows = plan_windows(ds.height, ds.width, TILE, stride_for(TILE, OVERLAP))[:8 * BATCH]
        tiles = [read_window(ds, w.row, w.col, TILE, TILE, [1, 2, 3])[0] for w in windows]
    return [np.stack(tiles[i:i + BATCH]) for i in range(0, len(tiles) - BATCH + 1, BATCH)]


def engine_alone(engine, scene: str, batches: int) -> float:
    """Seconds for ``batches`` inferences of the engine alone on real batches of the scene."""
    pool = tile_pool(scene)
    engine.infer(pool[0])
    t0 = time.perf_counter()
    for i in range(batches):
        engine.infer(pool[i % len(pool)])
    return time.perf_counter() - t0


def streamed(artifact: str, scene: str, out: str) -> dict:
    """Child process: the tiler on the whole scene, and the engine alone on as many batches.

    The engine alone runs half its batches before the scene and half after, so that a
    change in the shared machine's load during the run affects both figures alike; its
    tiles are freed before the scene so they do not count in the scene's peak memory.
    """
    from segbench.engines.registry import load
    from segbench.raster import open_raster
    from segbench.tiler import plan_windows, segment, stride_for

    engine = load(artifact)
    with open_raster(scene) as ds:
        windows = len(plan_windows(ds.height, ds.width, TILE, stride_for(TILE, OVERLAP)))
    half = -(-windows // BATCH) // 2
    before = engine_alone(engine, scene, half)
    with PeakMemory() as mem:
        result = segment(scene, engine, out, overlap=OVERLAP, blend="cosine", batch=BATCH)
    peak = mem.peak_rss_bytes
    after = engine_alone(engine, scene, result.batches - half)
    return {"wall": result.seconds, "engine_alone": before + after, "infer_in_pipeline": result.stages.infer,
            "peak": peak, "windows": result.windows, "stages": vars(result.stages)}


def naive(artifact: str, scene: str) -> dict:
    """Child process: hold logits for the whole scene, as mmseg's slide_inference does."""
    from segbench.engines.registry import load
    from segbench.raster import open_raster, read_window
    from segbench.tiler import plan_windows, stride_for

    engine = load(artifact)
    start = time.perf_counter()
    with PeakMemory() as mem, open_raster(scene) as ds:
        c = engine.spec.num_classes
        acc = np.zeros((c, ds.height, ds.width), np.float32)
        count = np.zeros((ds.height, ds.width), np.float32)
        windows = plan_windows(ds.height, ds.width, TILE, stride_for(TILE, OVERLAP))
        for i in range(0, len(windows), BATCH):
            group = windows[i:i + BATCH]
            tiles = np.stack([read_window(ds, w.row, w.col, TILE, TILE, [1, 2, 3])[0] for w in group])
            for w, logits in zip(group, engine.infer(tiles), strict=True):
                acc[:, w.row:w.row + TILE, w.col:w.col + TILE] += logits
                count[w.row:w.row + TILE, w.col:w.col + TILE] += 1
        labels = (acc / count).argmax(0).astype(np.uint8)
        del labels
    return {"wall": time.perf_counter() - start, "peak": mem.peak_rss_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,10000,20000")
    parser.add_argument("--engine", default="openvino-int8", help="the fastest CPU engine here")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segbench-scale")
    parser.add_argument("--naive-max", type=int, default=10000, help="largest size run naively")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scene (median ratio)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    artifact = build_engine(args.workdir, args.engine)
    print(f"engine {args.engine} ({artifact.name}), tile {TILE}, overlap {OVERLAP}, batch {BATCH}")
    print(f"{'scene':>8} {'windows':>8} {'wall s':>8} {'engine s':>9} {'ratio':>6} {'range':>11} "
          f"{'peak MiB':>9} {'naive s':>8} {'naive MiB':>10}")
    peaks = {}
    for size in sizes:
        scene = make_scene(args.workdir / f"scene_{size}.tif", size)
        runs = sorted((run_in_child(streamed, str(artifact), str(scene),
                                    str(args.workdir / f"labels_{size}.tif"))
                       for _ in range(max(args.repeats, 1))),
                      key=lambda run: run["wall"] / run["engine_alone"])
        r = runs[len(runs) // 2]  # the median run
        ratios = [run["wall"] / run["engine_alone"] for run in runs]
        peaks[size] = max(run["peak"] for run in runs)  # the highest of the runs
        if size <= args.naive_max:
            n = run_in_child(naive, str(artifact), str(scene))
            naive_s, naive_mib = f"{n['wall']:8.1f}", f"{n['peak'] / 2**20:10.0f}"
        else:
            projected = (6 + 1) * 4 * size * size  # logits of 6 classes + counts, float32
            naive_s, naive_mib = f"{'-':>8}", f"{'>' + format(projected / 2**20, '.0f'):>10}"
        span = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
        print(f"{size:>8} {r['windows']:>8} {r['wall']:>8.1f} {r['engine_alone']:>9.1f} "
              f"{ratios[len(ratios) // 2]:>6.2f} {span:>11} {peaks[size] / 2**20:>9.0f} "
              f"{naive_s} {naive_mib}")
        print(f"{'':>8} stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in r["stages"].items()))
    if len(peaks) > 1:
        lo, hi = min(peaks), max(peaks)
        print(f"peak memory {hi}^2 / {lo}^2: {peaks[hi] / peaks[lo]:.2f}x "
              f"(target <= 1.5x; {peaks[hi] / 2**30:.2f} GB, target <= 1.5 GB)")


if __name__ == "__main__":
    main()
