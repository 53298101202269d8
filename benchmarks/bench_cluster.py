"""Scale-out targets on a Dask LocalCluster: a huge scene in bounded memory, and 2 workers against 1 process.

1. ``--huge SIZE`` (default 100,000): a SIZE^2 scene that takes no disk (a VRT
   of VRTs repeating one 1024^2 synthetic block), a tiny real engine (a
   two-layer conv net exported to ONNX, ort-fp32, tile 256: fast, so the
   tiler dominates), ``--workers 2``: chunks, wall time, MP/s, each worker's
   peak resident memory (the kernel's high-water mark) and the client's.
2. ``--scaling SIZE`` (default 10,000): SegFormer-B0 (untrained) at 512,
   ort-fp32, on the synthetic scene of bench_tiler_scale.py: ``segment`` in
   one process against the same scene in chunks on 2 workers; the ratio, the
   one-process stage breakdown, and the share of equal labels (ONNX Runtime's
   batch-4 logits may differ in the last bits from the chunk's batches).

    python benchmarks/bench_cluster.py [--huge 100000] [--scaling 10000] [--chunk 4096] [--skip-huge]

Each part runs in child processes, as a user would: the real CLI, except the
one-process run of part 2, which calls the tiler's ``segment`` (what the
command runs) in a fresh child process, for its stage times; its wall time
counts the whole child (start, imports, engine load), as the CLI's does.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tiler_scale import build_engine, make_scene  # noqa: E402

OVERLAP, BATCH, BLEND = 128, 4, "cosine"  # both runs of part 2, said explicitly

SEGBENCH = Path(sys.executable).with_name("segbench")
BLOCK = 1024


def repeating_vrt(folder: Path, size: int) -> Path:
    """A size^2 VRT repeating one 1024^2 block: a row VRT of blocks, then a VRT of rows."""
    import rasterio

    from segbench.train.synth import synth_scene

    block = folder / "block.tif"
    pixels, _ = synth_scene(BLOCK, np.random.default_rng(0))
    with rasterio.open(block, "w", driver="GTiff", width=BLOCK, height=BLOCK, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(368000, 5808000, 0.3, 0.3),
                       tiled=True, blockxsize=512, blockysize=512) as ds:
        ds.write(np.round(pixels * 255).astype(np.uint8))
    n = -(-size // BLOCK)

    def vrt(path: Path, width: int, height: int, source: Path, w: int, h: int, across: bool) -> Path:
        bands = []
        for b in (1, 2, 3):
            sources = "".join(
                f'<SimpleSource><SourceFilename relativeToVRT="1">{source.name}</SourceFilename>'
                f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{i * w if across else 0}" yOff="{0 if across else i * h}" '
                f'xSize="{w}" ySize="{h}"/></SimpleSource>' for i in range(n))
            bands.append(f'<VRTRasterBand dataType="Byte" band="{b}">{sources}</VRTRasterBand>')
        path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>EPSG:32633</SRS>'
                        f"<GeoTransform>368000, 0.3, 0, 5808000, 0, -0.3</GeoTransform>{''.join(bands)}"
                        "</VRTDataset>")
        return path

    row = vrt(folder / "row.vrt", size, BLOCK, block, BLOCK, BLOCK, across=True)
    return vrt(folder / f"scene_{size}.vrt", size, size, row, size, BLOCK, across=False)


def tiny_engine(folder: Path, tile: int = 256) -> Path:
    """The tests' two-layer conv net as ONNX, built for ort-fp32."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from segbench.engines.registry import build
    from tests.conftest import make_spec, tiny_conv_onnx

    spec = make_spec(tile=tile, classes=6)
    return build(tiny_conv_onnx(folder / "tiny.onnx", spec), "ort-fp32", folder)


def run(args: list[str]) -> tuple[float, str]:
    """The segbench CLI with ``args``: wall seconds and its stderr."""
    start = time.perf_counter()
    proc = subprocess.run([str(SEGBENCH), *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"segbench {' '.join(args)} failed:\n{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def huge(workdir: Path, size: int, chunk: int) -> None:
    scene = repeating_vrt(workdir, size)
    engine = tiny_engine(workdir)
    out = workdir / "huge_labels.tif"
    seconds, text = run(["segment", str(scene), "--engine", str(engine), "-o", str(out), "--workers", "2",
                         "--chunk", str(chunk), "--batch", "8"])
    peaks = re.search(r"peak memory \(MB\): (.*)", text).group(1)
    chunks = (-(-size // chunk)) ** 2
    print(f"huge: {size}^2 ({size * size / 1e9:.2f} gigapixels), tiny conv net (ort-fp32, tile 256), "
          f"--workers 2, chunk {chunk}: {chunks} chunks in {seconds:.0f} s, "
          f"{size * size / 1e6 / seconds:.1f} MP/s")
    print(f"  peak memory (MB): {peaks}")
    out.unlink(missing_ok=True)


def one_process(artifact: str, scene: str, out: str) -> dict:
    """Child process: ``segment`` on the whole scene; its seconds and time per stage."""
    from segbench.engines.registry import load
    from segbench.tiler import segment

    with load(artifact) as engine:
        result = segment(scene, engine, out, overlap=OVERLAP, blend=BLEND, batch=BATCH)
    return {"segment": result.seconds, "stages": vars(result.stages)}


def scaling(workdir: Path, size: int, chunk: int) -> None:
    import rasterio

    from segbench.bench.memory import run_in_child

    scene = make_scene(workdir / f"scene_{size}.tif", size)
    engine = build_engine(workdir, "ort-fp32")
    start = time.perf_counter()
    alone = run_in_child(one_process, str(engine), str(scene), str(workdir / "one.tif"))
    one = time.perf_counter() - start
    two, _ = run(["segment", str(scene), "--engine", str(engine), "-o", str(workdir / "two.tif"),
                  "--overlap", str(OVERLAP), "--blend", BLEND, "--batch", str(BATCH), "--workers", "2",
                  "--chunk", str(chunk)])
    with rasterio.open(workdir / "one.tif") as a, rasterio.open(workdir / "two.tif") as b:
        same = float((a.read(1) == b.read(1)).mean())
    mp = size * size / 1e6
    print(f"scaling: SegFormer-B0 at 512, ort-fp32, {size}^2, overlap {OVERLAP}, batch {BATCH}, "
          f"chunk {chunk}")
    print(f"  one process      {one:7.1f} s  {mp / one:6.2f} MP/s   "
          f"(segment itself {alone['segment']:.1f} s)")
    print("    stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in alone["stages"].items()))
    print(f"  2 workers        {two:7.1f} s  {mp / two:6.2f} MP/s   ratio {one / two:.2f}x; "
          f"labels equal on {same:.4%} of pixels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--huge", type=int, default=100_000)
    parser.add_argument("--scaling", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--skip-huge", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segbench-cluster")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.skip_scaling:
        scaling(args.workdir, args.scaling, args.chunk)
    if not args.skip_huge:
        huge(args.workdir, args.huge, args.chunk)


if __name__ == "__main__":
    main()
