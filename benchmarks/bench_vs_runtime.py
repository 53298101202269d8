"""Whole scenes against the runtime's own best throughput, on the same artifact.

For each engine (SegFormer-B0 at 512, untrained weights; int8 calibrated on a
synthetic scene): the runtime's own best throughput in tiles/s (OpenVINO:
``benchmark_app -hint throughput`` at batch 4; ONNX Runtime: a bare session
loop with the engine's session options), then ``segbench segment`` on a
synthetic scene (engine loaded with ``mode="throughput"``, as the CLI does)
in tiles/s including read, blend and write, the stage breakdown, and the
ratio (target >= 0.95, flagged below). Each measurement runs in a fresh process.

On a CPU the engine and the tiler's helpers (read, blend, write) share the
cores, so the tiler also runs the scene with an instant engine (fixed logits):
the CPU seconds it spends per window bound the ratio any pipeline can reach
here, ``1 / (1 + helper_cpu_per_window * runtime_tiles_per_s / cores)``,
printed as "ceiling".

benchmark_app's "Throughput: N FPS" counts frames, i.e. tiles: it multiplies
its iterations (one inference of the whole [4,3,512,512] batch each) by the
"Model batch size" it prints (4 here; checked on this machine: 34870
iterations in 2.0 s printed 69735 FPS). Tiles/s here are computed from its
"Count" and "Duration" lines, and its FPS is printed beside them.

    python benchmarks/bench_vs_runtime.py [--size 5000] [--engines openvino-int8,openvino-fp32,ort-fp32]
                                          [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segbench.bench.memory import run_in_child

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tiler_scale import make_scene  # noqa: E402  (the same synthetic scene)

TILE, OVERLAP, BATCH = 512, 128, 4
TARGET = 0.95


def build_engine(workdir: Path, name: str) -> Path:
    """SegFormer-B0 (untrained) exported once; int8 calibrated on a synthetic calibration scene."""
    from segbench.engines.registry import build
    from segbench.export.calibration import calibration_tiles
    from segbench.export.onnx import export_model
    from segbench.spec import ModelSpec
    from segbench.train.models import untrained_checkpoint

    onnx_path = workdir / "segformer-b0.onnx"
    if not onnx_path.exists():
        checkpoint, _ = untrained_checkpoint("segformer-b0", workdir / "segformer-b0.pth", tile=TILE)
        export_model(checkpoint, onnx_path)
    calib = None
    if name.endswith("int8"):
        scene = make_scene(workdir / "calibration.tif", 2048)
        calib = calibration_tiles([scene], ModelSpec.load(onnx_path), count=32)
    return build(onnx_path, name, workdir, calibration=calib)


def openvino_best(artifact: str, seconds: int) -> dict:
    """benchmark_app with the THROUGHPUT hint at batch 4: tiles/s from its iteration count."""
    app = Path(sys.executable).with_name("benchmark_app")
    cmd = [str(app), "-m", artifact, "-d", "CPU", "-hint", "throughput", "-shape",
           f"pixels[{BATCH},3,{TILE},{TILE}]", "-t", str(seconds), "-infer_precision",
           _ov_precision(artifact)]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    iterations = int(_find(r"Count:\s+(\d+) iterations", text))
    duration_s = float(_find(r"Duration:\s+([\d.]+) ms", text)) / 1000
    requests = _find(r"(\d+) inference requests", text)
    batch = _find(r"Model batch size: (\d+)", text)
    return {"tiles_per_s": iterations * BATCH / duration_s,
            "fps_printed": float(_find(r"Throughput:\s+([\d.]+) FPS", text)),
            "how": f"benchmark_app -hint throughput, {requests} requests, "
                   f"model batch size {batch}"}


def _ov_precision(artifact: str) -> str:
    """The execution precision segbench compiles the engine with (f32 for fp32 and int8, bf16)."""
    from segbench.engines.openvino import _HINT
    from segbench.spec import ModelSpec

    return _HINT[ModelSpec.load(artifact).build.precision]


def _find(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"benchmark_app printed no {pattern!r}:\n{text[-2000:]}")
    return m.group(1)


def ort_best(artifact: str, seconds: int) -> dict:
    """Child process: a bare ONNX Runtime session loop (the engine's session options) at batch 4."""
    from segbench.engines.onnxruntime import create_session
    from segbench.engines.registry import load

    engine = load(artifact)
    options = engine.session_options
    engine.close()
    session = create_session(Path(artifact), "cpu", options)
    name = session.get_inputs()[0].name
    tiles = np.random.default_rng(0).uniform(0, 255, (BATCH, 3, TILE, TILE)).astype(np.float32)
    session.run(None, {name: tiles})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: tiles})
        runs += 1
    return {"tiles_per_s": runs * BATCH / (time.perf_counter() - start), "how": "bare session loop"}


def segbench_scene(artifact: str, scene: str, out: str) -> dict:
    """Child process: ``segbench segment``'s path (throughput mode) on the whole scene."""
    from segbench.engines.registry import load
    from segbench.tiler import segment

    with load(artifact, mode="throughput", batch=BATCH) as engine:
        result = segment(scene, engine, out, overlap=OVERLAP, blend="cosine", batch=BATCH)
        config = engine.config
    return {"tiles_per_s": (result.windows - result.skipped) / result.seconds, "seconds": result.seconds,
            "windows": result.windows, "stages": vars(result.stages), "config": config}


class InstantEngine:
    """Fixed logits at no cost: the tiler's own work (read, blend, write) with nothing to wait for."""

    def __init__(self, spec) -> None:
        self.spec, self.name, self.device = spec, "instant", "cpu"
        shape = (BATCH, spec.num_classes, spec.tile, spec.tile)
        self.logits = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        return self.logits[:len(tiles)]

    def close(self) -> None:
        pass


def helpers_alone(artifact: str, scene: str, out: str) -> dict:
    """Child process: the scene through the tiler with :class:`InstantEngine`; CPU seconds per window."""
    from segbench.spec import ModelSpec
    from segbench.tiler import segment

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    start = cpu()
    result = segment(scene, InstantEngine(ModelSpec.load(artifact)), out, overlap=OVERLAP, blend="cosine",
                     batch=BATCH)
    return {"cpu_per_window": (cpu() - start) / result.windows, "seconds": result.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5000, help="scene width and height (default 5000)")
    parser.add_argument("--engines", default="openvino-int8,openvino-fp32,ort-fp32")
    parser.add_argument("--seconds", type=int, default=16,
                        help="runtime measurement time per engine (half before the scene, half after)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segbench-vs-runtime")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scene = make_scene(args.workdir / f"scene_{args.size}.tif", args.size)
    print(f"SegFormer-B0, tile {TILE}, overlap {OVERLAP}, batch {BATCH}, scene {args.size}^2")
    artifacts = {name: str(build_engine(args.workdir, name)) for name in args.engines.split(",")}
    helpers = run_in_child(helpers_alone, next(iter(artifacts.values())), str(scene),
                           str(args.workdir / "labels_instant.tif"))
    cores = os.cpu_count() or 1
    print(f"tiler alone (instant engine): {helpers['seconds']:.1f} s, "
          f"{helpers['cpu_per_window'] * 1000:.0f} CPU ms per window on {cores} cores")
    print(f"{'engine':<15} {'runtime t/s':>11} {'segbench t/s':>12} {'ratio':>6}  "
          "segbench config; stages (s)")
    for name, artifact in artifacts.items():
        # the runtime runs half its time before the scene and half after, so that a change in the
        # shared machine's speed during the run affects both figures alike
        halves = []
        for when in ("before", "after"):
            if when == "after":
                ours = run_in_child(segbench_scene, artifact, str(scene),
                                    str(args.workdir / f"labels_{name}.tif"))
            halves.append(openvino_best(artifact, args.seconds // 2) if name.startswith("openvino")
                          else run_in_child(ort_best, artifact, args.seconds // 2))
        best = {**halves[1], "tiles_per_s": sum(h["tiles_per_s"] for h in halves) / 2,
                "range": [h["tiles_per_s"] for h in halves]}
        ratio = ours["tiles_per_s"] / best["tiles_per_s"]
        ceiling = 1 / (1 + helpers["cpu_per_window"] * best["tiles_per_s"] / cores)
        flag = "" if ratio >= TARGET else f"  BELOW {TARGET:.2f}"
        stages = ", ".join(f"{k} {v:.1f}" for k, v in ours["stages"].items())
        print(f"{name:<15} {best['tiles_per_s']:>11.2f} {ours['tiles_per_s']:>12.2f} {ratio:>6.2f}  "
              f"{ours['config']}; {ours['windows']} windows in {ours['seconds']:.1f} s; {stages}{flag}")
        print(f"{'':<15} ceiling {ceiling:.2f}; runtime before/after {best['range'][0]:.2f}/"
              f"{best['range'][1]:.2f}: {best['how']}"
              + (f" (it printed {best['fps_printed']:.2f} FPS)" if "fps_printed" in best else ""))


if __name__ == "__main__":
    main()
