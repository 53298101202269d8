"""How fast the tiler's reader feeds an engine: windows/s with 1, 2, 4, 8 reading threads.

The reader alone (``segbench.tiler.stages.Reader``) on the synthetic deflate scene of
bench_tiler_scale.py, its batches drained as they come, so the figure is what the reading stage
can give the fastest engine. Beside a GPU engine the tiler reads with several threads
(``tiler.pipeline._read_threads``); this says how many pay off on a machine.

    python benchmarks/bench_read.py [--size 5000] [--threads 1,2,4,8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tiler_scale import make_scene  # noqa: E402

TILE, OVERLAP, BATCH = 512, 128, 8


def windows_per_second(scene: Path, threads: int) -> tuple[float, float]:
    """(windows/s, CPU seconds per window) of the reader alone."""
    from segbench.raster import open_raster
    from segbench.spec import ModelSpec
    from segbench.tiler.channel import DONE, Channel
    from segbench.tiler.stages import Reader
    from segbench.tiler.windows import plan_windows, stride_for

    spec = ModelSpec(classes=("a", "b"), palette=((0, 0, 0), (255, 255, 255)), bands=(1, 2, 3),
                     mean=(0.0,) * 3, std=(1.0,) * 3, tile=TILE)
    with open_raster(scene) as ds:
        windows = plan_windows(ds.height, ds.width, TILE, stride_for(TILE, OVERLAP))
    stop = threading.Event()
    inbox = Channel(stop)
    reader = Reader(scene, windows, spec, BATCH, None, inbox, threads=threads)
    cpu0, t0 = time.process_time(), time.perf_counter()
    thread = threading.Thread(target=reader.run)
    thread.start()
    while inbox.get() is not DONE:
        pass
    thread.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return len(windows) / wall, cpu / len(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--threads", default="1,2,4,8")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segbench-read")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scene = make_scene(args.workdir / f"scene_{args.size}.tif", args.size)
    windows_per_second(scene, 1)  # warm the page cache
    print(f"reader alone, {args.size}^2 deflate scene, tile {TILE}, overlap {OVERLAP}, batch {BATCH}")
    base = None
    for threads in (int(t) for t in args.threads.split(",")):
        rate, cpu = windows_per_second(scene, threads)
        base = base or rate
        print(f"{threads} thread(s): {rate:7.1f} windows/s ({rate / base:.2f}x), "
              f"{cpu * 1000:.2f} CPU ms per window")


if __name__ == "__main__":
    main()
