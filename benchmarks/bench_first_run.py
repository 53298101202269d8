"""First use against later use: whole-process ``segbench segment`` with ``--batch auto`` twice.

The first run of an engine on a machine sweeps batch sizes (OpenVINO compiles
the engine once per candidate); the second reads the sweep kept beside the
engine. Both are timed as a user sees them (the whole command, from start to
exit) on the same 8,192^2 scene (SegFormer-B0 at 512, overlap 128, untrained;
openvino-int8 calibrated on a synthetic scene), next to OpenVINO's own
``benchmark_app -hint throughput`` on the same IR at the batch the sweep
chose: the windows' time at its tiles/s is what no pipeline can beat. Prints
each run's wall time, the sweep's line, and the ratios.

    python benchmarks/bench_first_run.py [--size 8192] [--engine openvino-int8] [--seconds 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tiler_scale import make_scene  # noqa: E402  (the same synthetic scene)
from bench_vs_runtime import BATCH, OVERLAP, TILE, build_engine, openvino_best  # noqa: E402

SEGBENCH = Path(sys.executable).with_name("segbench")


def segment_once(scene: Path, artifact: Path, out: Path) -> tuple[float, str]:
    """Wall seconds of one whole ``segbench segment`` process, and its batch line."""
    start = time.perf_counter()
    done = subprocess.run([str(SEGBENCH), "segment", str(scene), "--engine", str(artifact), "-o", str(out),
                           "--overlap", str(OVERLAP)], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    line = next((x for x in done.stderr.splitlines() if x.startswith("batch ")), "")
    return seconds, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--engine", default="openvino-int8")
    parser.add_argument("--seconds", type=int, default=15, help="benchmark_app's run time")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from segbench.engines.batchsize import sidecar
    from segbench.tiler import plan_windows, stride_for

    work = args.workdir or Path(tempfile.mkdtemp(prefix="segbench-first-run-"))
    artifact = build_engine(work, args.engine)
    scene = work / f"scene-{args.size}.tif"
    if not scene.exists():
        make_scene(scene, args.size)
    sidecar(artifact).unlink(missing_ok=True)  # a first use on this machine
    first, line1 = segment_once(scene, artifact, work / "first.tif")
    second, line2 = segment_once(scene, artifact, work / "second.tif")
    windows = len(plan_windows(args.size, args.size, TILE, stride_for(TILE, OVERLAP)))
    batch = int(line1.split()[1]) if line1 else BATCH
    best = openvino_best(str(artifact), args.seconds, batch)  # at the batch the sweep chose
    floor = windows / best["tiles_per_s"]
    print(f"{args.engine}, SegFormer-B0 at {TILE}, overlap {OVERLAP}, {args.size}^2 ({windows} windows)")
    print(f"first run  {first:6.1f} s   {line1}")
    print(f"second run {second:6.1f} s   {line2}")
    print(f"benchmark_app ({best['how']}, batch {batch}): {best['tiles_per_s']:.1f} tiles/s, "
          f"so {floor:.1f} s for the windows alone")
    print(f"first / second run: {first / second:.2f}x; second run / benchmark_app's time for the windows: "
          f"{second / floor:.2f}x")


if __name__ == "__main__":
    main()
