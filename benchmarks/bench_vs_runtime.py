"""Whole scenes against the runtime's own best throughput, and against mmseg's slide_inference.

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

The anchor users compare against (skipped with ``--no-mmseg``): mmseg's own
``slide_inference`` with the same network in torch fp32 on CPU (the same
checkpoint, ``test_cfg`` mode ``slide``, crop 512, stride 384: tile 512,
overlap 128), the whole scene read into memory with rasterio, normalised by
the model's ``data_preprocessor``, then argmax; against ``segbench segment``
with the torch-fp32 engine of the same checkpoint on the same scene. Each run
in a fresh process: wall seconds (mmseg's from reading the scene to the
labels, in memory; segbench's from opening the scene to the label COG
written; model and engine loading excluded from both) and peak resident
memory while it runs (the loaded model included), the ratios, and the share of
pixels on which the two label maps agree. segbench runs here with
``blend="mean"``, mmseg's averaging of overlapping windows, so the two should
agree on every pixel (they did at 1024^2; with the default cosine blend the
untrained network's near-tied logits differ on about 5%).

    python benchmarks/bench_vs_runtime.py [--size 5000] [--engines openvino-int8,openvino-fp32,ort-fp32]
                                          [--seconds 15] [--no-mmseg]

``--engines ''`` runs only the anchor.
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

from segbench.bench.memory import PeakMemory, run_in_child
from segbench.engines.base import EngineBase

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

    onnx_path = workdir / "segformer-b0.onnx"
    if not onnx_path.exists():
        export_model(checkpoint_path(workdir), onnx_path)
    calib = None
    if name.endswith("int8"):
        scene = make_scene(workdir / "calibration.tif", 2048)
        calib = calibration_tiles([scene], ModelSpec.load(onnx_path), count=32)
    return build(onnx_path, name, workdir, calibration=calib)


def checkpoint_path(workdir: Path) -> Path:
    """The untrained SegFormer-B0 checkpoint every engine and the mmseg anchor are made from."""
    from segbench.train.models import untrained_checkpoint

    path = workdir / "segformer-b0.pth"
    if not path.exists():
        untrained_checkpoint("segformer-b0", path, tile=TILE)
    return path


def openvino_best(artifact: str, seconds: int, batch: int = BATCH) -> dict:
    """benchmark_app with the THROUGHPUT hint at ``batch``: tiles/s from its iteration count."""
    app = Path(sys.executable).with_name("benchmark_app")
    cmd = [str(app), "-m", artifact, "-d", "CPU", "-hint", "throughput", "-shape",
           f"pixels[{batch},3,{TILE},{TILE}]", "-t", str(seconds), "-infer_precision",
           _ov_precision(artifact)]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    iterations = int(_find(r"Count:\s+(\d+) iterations", text))
    duration_s = float(_find(r"Duration:\s+([\d.]+) ms", text)) / 1000
    requests = _find(r"(\d+) inference requests", text)
    model_batch = _find(r"Model batch size: (\d+)", text)
    return {"tiles_per_s": iterations * batch / duration_s,
            "fps_printed": float(_find(r"Throughput:\s+([\d.]+) FPS", text)),
            "how": f"benchmark_app -hint throughput, {requests} requests, "
                   f"model batch size {model_batch}"}


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


def segbench_scene(artifact: str, scene: str, out: str, blend: str = "cosine") -> dict:
    """Child process: ``segbench segment``'s path (throughput mode) on the whole scene."""
    from segbench.engines.registry import load
    from segbench.tiler import segment

    with load(artifact, mode="throughput", batch=BATCH) as engine, PeakMemory() as mem:
        result = segment(scene, engine, out, overlap=OVERLAP, blend=blend, batch=BATCH)
        config = engine.config
    return {"tiles_per_s": (result.windows - result.skipped) / result.seconds, "seconds": result.seconds,
            "windows": result.windows, "stages": vars(result.stages), "config": config,
            "peak": mem.peak_rss_bytes}


def mmseg_slide(checkpoint: str, scene: str, labels_out: str) -> dict:
    """Child process: mmseg's ``slide_inference`` (torch fp32, CPU) on the whole scene read into memory."""
    import rasterio
    import torch
    from mmengine.config import ConfigDict

    from segbench.checkpoint import load_model

    model, spec = load_model(checkpoint)
    model.test_cfg = ConfigDict(mode="slide", crop_size=(TILE, TILE), stride=(TILE - OVERLAP,) * 2)
    with PeakMemory() as mem, torch.no_grad():
        start = time.perf_counter()
        with rasterio.open(scene) as ds:
            pixels = torch.from_numpy(ds.read(list(spec.bands)))
        inputs = model.data_preprocessor({"inputs": [pixels]}, False)["inputs"]
        h, w = inputs.shape[-2:]
        metas = [{"ori_shape": (h, w), "img_shape": (h, w), "pad_shape": (h, w), "padding_size": [0] * 4}]
        labels = model.slide_inference(inputs, metas).argmax(1)[0].to(torch.uint8).numpy()
        seconds = time.perf_counter() - start
    np.save(labels_out, labels)  # for the agreement check, outside the measurement
    return {"seconds": seconds, "peak": mem.peak_rss_bytes, "threads": torch.get_num_threads()}


def agreement(mmseg_labels: str, segbench_labels: str) -> float:
    """Share of pixels on which mmseg's labels and segbench's label COG agree."""
    import rasterio

    with rasterio.open(segbench_labels) as ds:
        ours = ds.read(1)
    return float((np.load(mmseg_labels) == ours).mean())


def anchor(workdir: Path, scene: Path, size: int, int8: dict | None) -> None:
    """mmseg's slide_inference against ``segbench segment`` (torch-fp32), each in a fresh process."""
    from segbench.files import sha256_file
    from segbench.spec import ModelSpec

    checkpoint = checkpoint_path(workdir)
    artifact = build_engine(workdir, "torch-fp32")
    if ModelSpec.load(artifact).checkpoint_digest != sha256_file(checkpoint):
        raise SystemExit(f"{artifact.name} was not made from {checkpoint}; remove {workdir} and run again.")
    mm_labels, our_labels = workdir / "labels_mmseg.npy", workdir / "labels_torch-fp32.tif"
    mm = run_in_child(mmseg_slide, str(checkpoint), str(scene), str(mm_labels))
    ours = run_in_child(segbench_scene, str(artifact), str(scene), str(our_labels), "mean")
    megapixels = size * size / 1e6
    print(f"\nanchor: mmseg slide_inference (crop {TILE}, stride {TILE - OVERLAP}, torch fp32, "
          f"{mm['threads']} threads) vs segbench segment, scene {size}^2")
    print(f"{'run':<34} {'wall s':>7} {'MP/s':>6} {'peak RSS MB':>12}")
    rows = [("mmseg slide_inference (torch fp32)", mm["seconds"], mm["peak"]),
            ("segbench segment torch-fp32", ours["seconds"], ours["peak"])]
    if int8 is not None:
        rows.append(("segbench segment openvino-int8", int8["seconds"], int8["peak"]))
    for run, seconds, peak in rows:
        print(f"{run:<34} {seconds:>7.1f} {megapixels / seconds:>6.2f} {peak / 2**20:>12.0f}")
    print(f"segbench torch-fp32 / mmseg: {mm['seconds'] / ours['seconds']:.2f}x the speed, "
          f"{ours['peak'] / mm['peak']:.2f}x the peak memory; labels agree on "
          f"{agreement(str(mm_labels), str(our_labels)):.2%} of pixels")
    if int8 is not None:
        print(f"segbench openvino-int8 / mmseg: {mm['seconds'] / int8['seconds']:.2f}x the speed, "
              f"{int8['peak'] / mm['peak']:.2f}x the peak memory")


class InstantEngine(EngineBase):
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
    parser.add_argument("--no-mmseg", dest="mmseg", action="store_false",
                        help="skip the anchor: mmseg's slide_inference against segbench segment (torch-fp32)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scene = make_scene(args.workdir / f"scene_{args.size}.tif", args.size)
    print(f"SegFormer-B0, tile {TILE}, overlap {OVERLAP}, batch {BATCH}, scene {args.size}^2")
    artifacts = {name: str(build_engine(args.workdir, name)) for name in args.engines.split(",") if name}
    scenes = {}
    if artifacts:
        runtime_vs_segbench(args, scene, artifacts, scenes)
    if args.mmseg:
        anchor(args.workdir, scene, args.size, scenes.get("openvino-int8"))


def runtime_vs_segbench(args: argparse.Namespace, scene: Path, artifacts: dict, scenes: dict) -> None:
    """Each engine: the runtime's best throughput against segbench segment; scene results into ``scenes``."""
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
        scenes[name] = ours
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
