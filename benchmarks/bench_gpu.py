"""GPU engines alone and whole scenes through the device tiler, on an NVIDIA GPU.

Two steps, because the GPU machine has no mmsegmentation:

1. On a machine with the ``train`` extra, export the networks (untrained, 6
   classes, tile 512; the ONNX graph and the ``torch.export`` program with
   their specs)::

       python benchmarks/bench_gpu.py prepare DIR

2. On the GPU machine (segbench installed without extras, see the README's
   GPU section), build every GPU engine that runs there and measure::

       python benchmarks/bench_gpu.py measure DIR [--size 20000] [--out DIR/gpu.json] [--scenarios 60]

A smoke run of the same code on a CPU (small sizes, the CPU torch engine)::

       python benchmarks/bench_gpu.py measure DIR --engines torch-fp32 --size 1500 \
           --alone-batches 1,2 --scene-batches 2 --seconds 1 --networks segformer-b0 --scenarios 6

For SegFormer-B0 and DeepLabV3+-R50: each engine alone (tiles already on the
GPU, ``infer_tensor``; engines without it take host tiles) at batch 1, 8 and
32, tiles/s; then a SIZE^2 scene (a VRT repeating one synthetic block: no
disk) through ``segment`` with the device tiler at batch 8 and 32, its tiles/s,
the ratio scene / engine alone at the same batch (target >= 0.80), the stage
breakdown, the process's peak GPU memory, the scene's energy (NVML, with
nvidia-ml-py; "not measured" otherwise), and each engine's label agreement
with the first engine (torch-cuda-fp32) on the scene (target >= 99.5 % for fp16).
With ``--scenarios SECONDS`` (needs the 'loadgen' extra), also LoadGen's Offline
and Server (the search given SECONDS, p99 bound 10x the engine's batch-1 p50)
through the bench's dynamic batcher, as ``segbench bench --scenarios`` runs them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

NETWORKS = ("segformer-b0", "deeplabv3plus-r50")
TILE, OVERLAP, CLASSES = 512, 128, 6
ENGINES = ("torch-cuda-fp32", "torch-fp16", "torch-bf16", "torch-compile-fp16",
           "ort-cuda-fp32", "ort-cuda-fp16", "trt-fp32", "trt-fp16")
ALONE_BATCHES = (1, 8, 32)
SCENE_BATCHES = (8, 32)


def prepare(folder: Path) -> None:
    from segbench.export.onnx import export_model
    from segbench.train.models import untrained_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    for network in NETWORKS:
        onnx_path = folder / f"{network}.onnx"
        if onnx_path.exists():
            continue
        checkpoint, _ = untrained_checkpoint(network, folder / f"{network}.pth", classes=CLASSES, tile=TILE)
        export_model(checkpoint, onnx_path)
        Path(checkpoint).unlink()  # the GPU machine needs the ONNX graph and the .pt2 program only
        print(f"exported {onnx_path} and {onnx_path.with_suffix('.pt2')}")


def sync(engine) -> None:
    """Wait for the work queued on the engine's GPU (nothing to wait for on a CPU)."""
    import torch

    if str(engine.device).startswith("cuda"):
        torch.cuda.synchronize(engine.device)


def engine_alone(engine, batch: int, seconds: float = 3.0) -> float:
    """Tiles/s of the engine alone: random tiles already where the engine takes them."""
    import torch

    tiles = np.random.default_rng(0).uniform(0, 255, (batch, 3, TILE, TILE)).astype(np.float32)
    if getattr(engine, "device_tensors", False):
        x = torch.from_numpy(tiles).to(engine.device)

        def run():
            return engine.infer_tensor(x)
    else:
        def run():
            return engine.infer(tiles)
    for _ in range(3):  # warm-up: cuDNN's algorithm search, torch.compile
        run()
    sync(engine)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls < 5:
        run()
        calls += 1
    sync(engine)
    return calls * batch / (time.perf_counter() - t0)


def scenarios(artifact: Path, folder: Path, search_seconds: float) -> dict:
    """LoadGen's Offline tiles/s and Server QPS of one engine, on 64 random tiles (in a child process
    each, as the bench runs them)."""
    from segbench.bench.scenarios import ScenarioSettings, loadgen_dir, run_scenario

    tiles = np.random.default_rng(0).uniform(0, 255, (64, 3, TILE, TILE)).astype(np.float32)
    short = {"min_duration_ms": int(1000 * search_seconds / 3)}
    offline = run_scenario(artifact, tiles, ScenarioSettings.default("offline", **short),
                           loadgen_dir(folder, artifact.stem, "offline"))
    single = run_scenario(artifact, tiles, ScenarioSettings.default("single-stream", **short),
                          loadgen_dir(folder, artifact.stem, "single-stream"))
    server = run_scenario(artifact, tiles, ScenarioSettings.default(
        "server", latency_bound_ms=10 * single.p50_ms, search_seconds=search_seconds,
        capacity_qps=offline.figure), loadgen_dir(folder, artifact.stem, "server"))
    return {"offline_tiles_per_s": offline.figure, "single_p50_ms": single.p50_ms,
            "server_qps": server.figure, "server_p99_ms": server.p99_ms, "bound_ms": 10 * single.p50_ms,
            "server_note": server.note, "server_batches": server.batch_histogram}


def measure(folder: Path, size: int, out: Path, engines: list[str], alone_batches=ALONE_BATCHES,
            scene_batches=SCENE_BATCHES, seconds: float = 3.0, scenario_seconds: float = 0.0,
            networks=NETWORKS) -> dict:
    import rasterio
    import torch
    from bench_cluster import repeating_vrt

    from segbench.bench.energy import EnergyMeter
    from segbench.engines.registry import availability, build, load
    from segbench.tiler import segment
    from segbench.tiler.device import runs_on_device

    scene = repeating_vrt(folder, size)
    cuda = torch.cuda.is_available()
    report = {"gpu": torch.cuda.get_device_name() if cuda else "no GPU", "torch": torch.__version__,
              "size": size, "tile": TILE, "overlap": OVERLAP, "alone_batches": list(alone_batches),
              "scene_batches": list(scene_batches), "networks": {}}
    for network in networks:
        onnx_path = folder / f"{network}.onnx"
        rows = report["networks"][network] = {}
        for name in engines:
            reason = availability(name)
            if reason:
                rows[name] = {"unavailable": reason}
                print(f"{network} {name}: {reason}")
                continue
            artifact = build(onnx_path, name, folder)
            engine = load(artifact)
            row = rows[name] = {"engine_device_bytes": getattr(engine, "device_memory_bytes", None),
                                "alone": {}, "scene": {}}
            for batch in alone_batches:
                row["alone"][batch] = engine_alone(engine, batch, seconds)
            for batch in scene_batches:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                labels = folder / f"{network}.{name}.b{batch}.tif"
                with EnergyMeter() as meter:
                    result = segment(scene, engine, labels, overlap=OVERLAP, batch=batch)
                tiles_s = (result.windows - result.skipped) / result.seconds
                row["scene"][batch] = {
                    "seconds": result.seconds, "tiles_per_s": tiles_s, "mp_per_s": result.megapixels_per_s,
                    "ratio": tiles_s / row["alone"][batch], "on_device": runs_on_device(engine, None),
                    "stages": vars(result.stages),
                    "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                    "joules": meter.energy.joules, "energy_source": meter.energy.source or meter.energy.note,
                    "labels": str(labels)}
                print(f"{network} {name} batch {batch}: alone {row['alone'][batch]:.1f} tiles/s, scene "
                      f"{tiles_s:.1f} tiles/s, ratio {tiles_s / row['alone'][batch]:.2f}", flush=True)
            engine.close()
            if cuda:
                torch.cuda.empty_cache()
            if scenario_seconds:
                row["scenarios"] = scenarios(artifact, folder / "loadgen" / network, scenario_seconds)
                print(f"{network} {name} scenarios: {row['scenarios']}", flush=True)
        reference = rows.get(engines[0], {}).get("scene", {}).get(scene_batches[0])
        if reference:
            with rasterio.open(reference["labels"]) as ds:
                ref = ds.read(1)
            for row in rows.values():
                if "scene" not in row:
                    continue
                with rasterio.open(row["scene"][scene_batches[0]]["labels"]) as ds:
                    row["agreement"] = float((ds.read(1) == ref).mean())
    out.write_text(json.dumps(report, indent=2))
    print(table(report))
    return report


def table(report: dict) -> str:
    alone_b, scene_b = report["alone_batches"], report["scene_batches"]
    ab, sb = " / ".join(f"b{b}" for b in alone_b), " / ".join(f"b{b}" for b in scene_b)
    lines = [f"{report['gpu']}, torch {report['torch']}, scene {report['size']}^2, tile {TILE}, "
             f"overlap {OVERLAP}", "",
             f"| network | engine | alone {ab} tiles/s | scene {sb} tiles/s | ratio {sb} "
             f"| read / infer / blend / write s (b{scene_b[-1]}) | peak GPU MB | J (b{scene_b[-1]}) "
             "| Offline tiles/s | Server QPS (p99 <= bound) | agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for network, rows in report["networks"].items():
        for name, row in rows.items():
            if "unavailable" in row:
                lines.append(f"| {network} | {name} | {row['unavailable']} | | | | | | | | |")
                continue
            alone = " / ".join(f"{row['alone'][b]:.1f}" for b in alone_b)
            scene = " / ".join(f"{row['scene'][b]['tiles_per_s']:.1f}" for b in scene_b)
            ratio = " / ".join(f"{row['scene'][b]['ratio']:.2f}" for b in scene_b)
            last = row["scene"][scene_b[-1]]
            stages = " / ".join(f"{last['stages'][k]:.1f}" for k in ("read", "infer", "blend", "write"))
            agree = f"{row['agreement']:.4%}" if "agreement" in row else ""
            peak = f"{last['peak_gpu_bytes'] / 2**20:.0f}" if last["peak_gpu_bytes"] else ""
            joules = f"{last['joules']:.0f}" if last.get("joules") is not None else "not measured"
            sc = row.get("scenarios") or {}
            offline = f"{sc['offline_tiles_per_s']:.1f}" if sc.get("offline_tiles_per_s") else ""
            server = (f"{sc['server_qps']:.1f} ({sc['bound_ms']:.0f} ms)" if sc.get("server_qps")
                      else sc.get("server_note") or "")
            lines.append(f"| {network} | {name} | {alone} | {scene} | {ratio} | {stages} | {peak} "
                         f"| {joules} | {offline} | {server} | {agree} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="export the networks (needs the train extra)")
    p.add_argument("folder", type=Path)
    m = sub.add_parser("measure", help="build and measure the GPU engines (needs a CUDA GPU)")
    m.add_argument("folder", type=Path)
    m.add_argument("--size", type=int, default=20_000, help="scene side in pixels (default 20,000)")
    m.add_argument("--engines", default=",".join(ENGINES), help="the first is the reference")
    m.add_argument("--alone-batches", default="1,8,32")
    m.add_argument("--scene-batches", default="8,32")
    m.add_argument("--seconds", type=float, default=3.0, help="timing per engine-alone figure")
    m.add_argument("--out", type=Path, default=None, help="report JSON (default FOLDER/gpu.json)")
    m.add_argument("--networks", default=",".join(NETWORKS))
    m.add_argument("--scenarios", type=float, default=0.0, metavar="SECONDS",
                   help="also LoadGen's Offline and Server, the Server search given SECONDS (0: none)")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.folder)
    else:
        measure(args.folder, args.size, args.out or args.folder / "gpu.json", args.engines.split(","),
                [int(b) for b in args.alone_batches.split(",")],
                [int(b) for b in args.scene_batches.split(",")], args.seconds, args.scenarios,
                args.networks.split(","))


if __name__ == "__main__":
    main()
