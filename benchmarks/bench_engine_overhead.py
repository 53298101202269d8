"""Each CPU engine's median latency through segbench against the raw runtime called directly.

For one 512x512 tile and for batch 4: segbench's ``Engine.infer`` against
``InferenceSession.run`` (ONNX Runtime), an OpenVINO infer request, and the
torch.export module, on the same artifact. The wrapper must cost under 3%.
Calls alternate between the two so drift on a shared machine hits both alike.

    python benchmarks/bench_engine_overhead.py [model.onnx]

Without a model, an untrained SegFormer-B0 is exported at 512x512 first.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segbench.engines.registry import available_engines, build, load
from segbench.spec import ModelSpec

ENGINES = ("ort-fp32", "ort-int8", "openvino-fp32", "openvino-int8", "torch-fp32")
ROUNDS = 15


def raw_runner(artifact: Path, name: str, engine):
    """The runtime itself, set up as the engine sets it up, without segbench around it."""
    if name.startswith("ort-"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # the options the engine's session runs with (recorded at build time: arena, memory
        # pattern, optimization level, threads), each set on ONNX Runtime's own object
        for key, value in engine.session_options.items():
            if key == "graph_optimization_level":
                value = getattr(ort.GraphOptimizationLevel, value)
            setattr(opts, key, value)
        session = ort.InferenceSession(str(artifact), opts, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda x: session.run(None, {input_name: x})[0]
    if name.startswith("openvino-"):
        from segbench.engines.openvino import core

        hint = "bf16" if name.endswith("bf16") else "f32"
        compiled = core().compile_model(str(artifact), "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()

        def run(x):
            request.infer({0: x}, share_inputs=True)
            return request.get_output_tensor(0).data.copy()
        return run
    import torch

    module = torch.export.load(str(artifact)).module()

    def run(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    return run


def paired_medians(a, b, x, rounds: int = ROUNDS) -> tuple[float, float]:
    a(x), b(x)
    ta, tb = [], []
    for _ in range(rounds):
        for fn, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn(x)
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def exported_model(workdir: Path) -> Path:
    from segbench.export.onnx import export_model
    from segbench.train.models import untrained_checkpoint

    checkpoint, _ = untrained_checkpoint("segformer-b0", workdir / "model.pth", tile=512)
    return export_model(checkpoint, workdir / "model.onnx")[0]


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="segbench-overhead-"))
    onnx_path = Path(sys.argv[1]) if len(sys.argv) > 1 else exported_model(workdir)
    spec = ModelSpec.load(onnx_path)
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 255, (8, spec.num_bands, spec.tile, spec.tile)).astype(np.float32)
    print(f"model {onnx_path} ({spec.architecture}, tile {spec.tile})")
    print(f"{'engine':<15}{'batch':>6}{'segbench ms':>14}{'raw ms':>10}{'overhead':>10}")
    available = set(available_engines())
    for name in ENGINES:
        if name not in available:
            print(f"{name:<15} skipped: not available here")
            continue
        artifact = build(onnx_path, name, workdir, calibration=calib)
        engine = load(artifact)
        raw = raw_runner(artifact, name, engine)
        if name.startswith("ort-"):
            print(f"{name:<15} session options (both): {engine.session_options}")
        for batch in (1, 4):
            x = rng.uniform(0, 255, (batch, spec.num_bands, spec.tile, spec.tile)).astype(np.float32)
            ours, theirs = paired_medians(engine.infer, raw, x)
            print(f"{name:<15}{batch:>6}{ours:>14.1f}{theirs:>10.1f}{(ours / theirs - 1):>10.1%}")
        engine.close()


if __name__ == "__main__":
    main()
