"""Native hot loops of the tiler: numpy, the portable build, its baseline alone, and -march=native.

Realistic sizes: 6 classes, 512x512 windows accumulated into a 640-row band
buffer of a 10,000-pixel-wide scene; argmax over a 512-row band. Each build of
``_native`` is compiled here with cmake into a temporary folder and measured
in its own process, one after another in one run, so the ratios are
meaningful on a noisy machine (median of several repeats):

* portable: what ``pip install`` builds (x86-64-v2, the row kernels also
  compiled for x86-64-v3 and -v4 and chosen when the module loads);
* baseline only: the same without those clones, what a CPU without AVX2 runs
  (the fused multiply-add of the blend is then a library call);
* native: ``-DSEGBENCH_NATIVE_ARCH=ON`` (``-march=native``), the old default.

The native loops run on one thread (as the tiler runs them beside a CPU
engine) and on every core (beside a GPU engine); numpy on one.

    python benchmarks/bench_native.py [--builds portable,baseline,native]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES, TILE, WIDTH, BAND = 6, 512, 10_000, 640
REPEATS = 7
ROOT = Path(__file__).resolve().parents[1]
BUILDS = {"portable": [], "baseline": ["-DSEGBENCH_CLONES=OFF"], "native": ["-DSEGBENCH_NATIVE_ARCH=ON"]}


def median_seconds(fn, repeats: int = REPEATS) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def build(name: str, folder: Path) -> Path:
    """Compile ``_native`` with the build's cmake options into ``folder``; the module's path."""
    import pybind11

    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(folder), "-DCMAKE_BUILD_TYPE=Release",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}",
                    *BUILDS[name]], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(folder), "-j", str(os.cpu_count() or 2)], check=True,
                   capture_output=True)
    return next(folder.glob("_native*.so"))


def measure(module_path: str) -> dict[str, float]:
    """Seconds of each loop with the module at ``module_path`` (1 thread and every core), and numpy's."""
    spec = importlib.util.spec_from_file_location("_native", module_path)
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    from segbench.tiler import reference

    rng = np.random.default_rng(0)
    acc = np.zeros((CLASSES, BAND, WIDTH), np.float32)
    wsum = np.zeros((BAND, WIDTH), np.float32)
    logits = rng.normal(size=(CLASSES, TILE, TILE)).astype(np.float32)
    wy, wx = rng.random(TILE).astype(np.float32), rng.random(TILE).astype(np.float32)
    cols = list(range(0, WIDTH - TILE, 384))
    out = {}
    for threads in (1, 0):
        out[f"accumulate/{threads}"] = median_seconds(
            lambda t=threads: [native.accumulate(acc, wsum, logits, wy, wx, 64, c, t) for c in cols])
    acc[:] = rng.normal(size=acc.shape)
    wsum[:] = 1
    valid = rng.random((BAND, WIDTH)) > 0.01
    for threads in (1, 0):
        out[f"argmax/{threads}"] = median_seconds(
            lambda t=threads: native.argmax_labels(acc, wsum, TILE, valid, 255, False, t))
        out[f"argmax+confidence/{threads}"] = median_seconds(
            lambda t=threads: native.argmax_labels(acc, wsum, TILE, valid, 255, True, t))
    out["accumulate/numpy"] = median_seconds(
        lambda: [reference.accumulate(acc, wsum, logits, wy, wx, 64, c) for c in cols])
    out["argmax/numpy"] = median_seconds(lambda: reference.argmax_labels(acc, wsum, TILE, valid, 255))
    out["argmax+confidence/numpy"] = median_seconds(
        lambda: reference.argmax_labels(acc, wsum, TILE, valid, 255, True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", default=",".join(BUILDS))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child: one module's timings as JSON
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    cores = os.cpu_count() or 1
    results = {}
    with tempfile.TemporaryDirectory(prefix="segbench-native-") as tmp:
        for name in args.builds.split(","):
            module = build(name, Path(tmp) / name)
            done = subprocess.run([sys.executable, __file__, "--measure", str(module)], check=True,
                                  capture_output=True, text=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    cols = len(range(0, WIDTH - TILE, 384))
    labels = {"accumulate": f"accumulate {cols} windows {CLASSES}x{TILE}^2",
              "argmax": f"argmax {TILE} x {WIDTH} px",
              "argmax+confidence": f"argmax+confidence {TILE} x {WIDTH}"}
    numpy_ms = {loop: 1e3 * statistics.median(r[f"{loop}/numpy"] for r in results.values())
                for loop in labels}
    print(f"{'loop':<36}{'numpy':>9}" + "".join(f"{n + ' 1t':>16}{n + f' {cores}t':>16}" for n in results))
    for loop, label in labels.items():
        line = f"{label:<36}{numpy_ms[loop]:>7.1f}ms"
        for r in results.values():
            for threads in (1, 0):
                ms = 1e3 * r[f"{loop}/{threads}"]
                line += f"{ms:>9.1f}ms {numpy_ms[loop] / ms:>4.1f}x"
        print(line)
    print("ms: median of 7; x: numpy's time over the build's; numpy: the median over the builds' runs")


if __name__ == "__main__":
    main()
