"""MLPerf scenarios through the dynamic batcher against each runtime alone, for every CPU engine.

For each engine (SegFormer-B0 at 256, untrained; int8 as plain Q/DQ calibrated
on random tiles, unchecked), side by side in one run:

- Server QPS (LoadGen, highest VALID target QPS under a p99 bound of 10x the
  engine's own batch-1 p50 from SingleStream) against Offline tiles/s: the
  batcher's efficiency, goal >= 0.8 (``--one-worker``: also with one batcher
  worker, as the batcher first was);
- Offline tiles/s against the runtime alone: ``benchmark_app -hint throughput``
  (batch 1, its own streams) for OpenVINO, a bare session loop (ONNX Runtime; on
  as many threads as the engine runs streams) or a bare loop over the
  ``torch.export`` module (torch) at the batcher's batch; goal >= 0.9;
- what queueing alone allows of that ratio: the highest share of Offline at which an ideal
  queue of the engine's streams (Poisson arrivals, each stream serving one tile at a time in
  streams / Offline seconds, with no overhead and no tail of its own) keeps its p99 within the
  bound. A bound of 10x the batch-1 p50 is about 5x such a tile for an engine of two one-thread
  streams, which holds that queue near 0.75-0.85; batching does better only where a batch runs
  faster per tile than single tiles (torch);
- SingleStream p90 against ``benchmark_app -hint latency`` (its 90th percentile, the
  model's batch dimension left dynamic as the latency-mode engine compiles it) or a
  bare loop at batch 1; goal: within 10 %. Both run ``--pairs`` times in turns and
  their medians are compared, and so is each pair (the median of the pairs' ratios):
  on this 2-core VM a multi-threaded runtime's batch-1 time flips between two levels
  for seconds at a time (ONNX Runtime's SegFormer-B0 fp32 27 or 38 ms, torch's 51 or
  80 ms, in the same process), so one of each can differ by 30 % with nothing wrong,
  and a pair whose two runs fell on different levels is an outlier the median drops.

Every measurement runs in a fresh process (LoadGen's in the scenarios' child).

    python benchmarks/bench_scenarios.py [--engines ort-fp32,...] [--search-seconds 150] [--tile 256]
                                         [--one-worker]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segbench.bench.memory import run_in_child
from segbench.bench.scenarios import ScenarioSettings, loadgen_dir, run_scenario
from segbench.errors import SegbenchError

ENGINES = ("torch-fp32", "ort-fp32", "ort-int8", "openvino-fp32", "openvino-int8")
TILES = 64


def build_engine(workdir: Path, name: str, tile: int) -> Path:
    """SegFormer-B0 (untrained) exported once at ``tile``; int8 plain, calibrated on random tiles."""
    from segbench.engines.registry import build
    from segbench.export.onnx import export_model
    from segbench.export.qualify import Int8Options
    from segbench.train.models import untrained_checkpoint

    onnx_path = workdir / "segformer-b0.onnx"
    if not onnx_path.exists():
        checkpoint, _ = untrained_checkpoint("segformer-b0", workdir / "segformer-b0.pth", tile=tile)
        export_model(checkpoint, onnx_path)
    calib = np.random.default_rng(1).uniform(0, 255, (16, 3, tile, tile)).astype(np.float32)
    return build(onnx_path, name, workdir, calibration=calib, int8=Int8Options(target=None))


def benchmark_app(artifact: Path, hint: str, tile: int, seconds: int) -> dict:
    """OpenVINO's own benchmark_app at batch 1: tiles/s (count x batch / duration) and p50/p90 ms."""
    from segbench.engines.openvino import _HINT
    from segbench.spec import ModelSpec

    app = Path(sys.executable).with_name("benchmark_app")
    # latency: the model's dynamic batch kept, as the latency-mode engine compiles it; throughput:
    # batch fixed to 1, as the throughput-mode engine (engine_batch=1) compiles it
    shape = "-data_shape" if hint == "latency" else "-shape"
    cmd = [str(app), "-m", str(artifact), "-d", "CPU", "-hint", hint, shape, f"pixels[1,3,{tile},{tile}]",
           "-t", str(seconds), "-infer_precision", _HINT[ModelSpec.load(artifact).build.precision],
           "-latency_percentile", "90"]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    count = int(_find(r"Count:\s+(\d+) iterations", text))
    duration = float(_find(r"Duration:\s+([\d.]+) ms", text)) / 1000
    p90 = _find(r"(?:Median|percentile):\s+([\d.]+) ms", text)
    requests = re.search(r"(\d+) inference requests", text)
    return {"tiles_per_s": count / duration, "p90_ms": float(p90),
            "how": f"benchmark_app -hint {hint} ({requests.group(1) if requests else 1} requests)"}


def _find(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"benchmark_app printed no {pattern!r}:\n{text[-1500:]}")
    return m.group(1)


def bare_loop(artifact: str, batch: int, seconds: float, mode: str) -> dict:
    """Child process: the runtime alone, ``batch`` tiles per run: an ONNX Runtime session (the
    engine's session options in ``mode``; where the engine runs streams, as many threads each
    looping on the one session), or the ``torch.export`` program's module under inference mode."""
    from concurrent.futures import ThreadPoolExecutor

    from segbench.spec import ModelSpec

    spec = ModelSpec.load(Path(artifact))
    x = np.random.default_rng(0).uniform(0, 255, (batch, 3, spec.tile, spec.tile)).astype(np.float32)
    streams = 1
    if spec.build.engine.startswith("torch"):
        import torch

        module, how = torch.export.load(artifact).module(), "bare torch.export module loop"
        tensor = torch.from_numpy(x)

        def run() -> None:
            with torch.inference_mode():
                module(tensor)
    else:
        from segbench.engines.onnxruntime import create_session
        from segbench.engines.registry import load

        with load(artifact, mode=mode, batch=1 if mode == "throughput" else None) as engine:
            options, streams = engine.session_options, engine.inflight
        session = create_session(Path(artifact), "cpu", options)
        name = session.get_inputs()[0].name
        how = "bare session loop" + (f", {streams} threads of one intra-op thread" if streams > 1 else "")

        def run() -> None:
            session.run(None, {name: x})

    def loop() -> list[float]:
        run()
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return times

    with ThreadPoolExecutor(streams) as pool:  # the threads' rates add up: they run together
        per_thread = list(pool.map(lambda _: loop(), range(streams)))
    times = [t for ts in per_thread for t in ts]
    return {"tiles_per_s": sum(len(ts) * batch / sum(ts) for ts in per_thread),
            "p90_ms": float(np.percentile(times, 90)) * 1e3, "p50_ms": statistics.median(times) * 1e3,
            "how": f"{how}, batch {batch}"}


def runtime_alone(artifact: Path, name: str, tile: int, seconds: int, batch: int | None) -> dict:
    """The runtime's own throughput (``batch``: the batcher's) or, with ``batch`` None, batch-1 latency."""
    if name.startswith("openvino"):
        return benchmark_app(artifact, "latency" if batch is None else "throughput", tile, seconds)
    return run_in_child(bare_loop, str(artifact), batch or 1, seconds,
                        "latency" if batch is None else "throughput")


def queue_ceiling(streams: int, offline_per_s: float, bound_ms: float, arrivals: int = 20_000) -> float:
    """The highest share of ``offline_per_s`` at which an M/D/``streams`` queue (Poisson arrivals,
    each stream serving one tile at a time in ``streams / offline_per_s`` s) has its p99 within
    ``bound_ms``: what queueing alone allows a Server figure without batching."""
    service = streams / offline_per_s
    gaps = np.random.default_rng(0).exponential(1.0, arrivals)

    def p99_ms(share: float) -> float:
        free, waits, now = np.zeros(streams), np.empty(arrivals), 0.0
        for k, gap in enumerate(gaps / (share * offline_per_s)):
            now += gap
            i = int(free.argmin())
            free[i] = max(now, free[i]) + service
            waits[k] = free[i] - now
        return float(np.percentile(waits, 99)) * 1e3

    low, high = 0.0, 1.0
    for _ in range(12):
        mid = (low + high) / 2
        low, high = (mid, high) if p99_ms(mid) <= bound_ms else (low, mid)
    return low


def measure(name: str, artifact: Path, tiles: Path, out: Path, args) -> dict:
    """SingleStream, Offline and the Server search of one engine, and the runtime alone."""
    short = {"min_duration_ms": args.min_duration_ms}
    singles, alones = [], []
    for i in range(args.pairs):  # taken in turns: each runtime's batch-1 time drifts between modes
        singles.append(run_scenario(artifact, tiles, ScenarioSettings.default("single-stream", **short),
                                    loadgen_dir(out, name, f"single-stream-{i + 1}")))
        alones.append(runtime_alone(artifact, name, args.tile, args.runtime_seconds, None))
    single = sorted(singles, key=lambda r: r.figure)[len(singles) // 2]
    alone_lat = {**sorted(alones, key=lambda r: r["p90_ms"])[len(alones) // 2],
                 "pairs": [[r.figure, a["p90_ms"]] for r, a in zip(singles, alones, strict=True)]}
    offline = run_scenario(artifact, tiles, ScenarioSettings.default("offline", **short),
                           loadgen_dir(out, name, "offline"))
    batch = max(offline.batch_histogram, key=offline.batch_histogram.get)
    alone_tp = runtime_alone(artifact, name, args.tile, args.runtime_seconds, batch)
    bound = 10 * single.p50_ms

    def server(workers: int | None, folder: str):
        return run_scenario(artifact, tiles, ScenarioSettings.default(
            "server", latency_bound_ms=bound, search_seconds=args.search_seconds,
            capacity_qps=offline.figure, workers=workers), loadgen_dir(out, name, folder))

    found = server(None, "server")
    one = server(1, "server-one-worker") if args.one_worker and found.settings.workers > 1 else None
    return {"engine": name, "single": single.to_dict(), "offline": offline.to_dict(),
            "server": found.to_dict(), "server_one_worker": one.to_dict() if one else None,
            "alone_throughput": alone_tp, "alone_latency": alone_lat,
            "ceiling": queue_ceiling(found.settings.workers, offline.figure, bound),
            "bound_ms": bound, "load_average": os.getloadavg()[0]}


def server_lines(v: dict, offline: float, bound_ms: float, ceiling: float) -> list[str]:
    qps = v["figure"] or 0.0
    lines = [f"  Server ({v['settings']['workers']} batcher worker(s)) at p99 <= {bound_ms:.0f} ms: "
             f"{qps:.1f} QPS (p99 {v['p99_ms'] or 0:.0f} ms, batches {v['batch_histogram']}) = "
             f"{qps / offline:.2f} of Offline (goal >= 0.8; an ideal unbatched queue of its "
             f"{v['settings']['workers']} stream(s): {ceiling:.2f})"
             + (f"; {v['note']}" if v["note"] else "")]
    return lines + [f"    {'probe' if p.get('probe') else 'point'} {p['target_qps']:.1f} QPS: "
                    f"p50 {p['p50_ms'] or 0:.0f} p90 {p['p90_ms'] or 0:.0f} "
                    f"p99 {p['p99_ms'] or 0:.0f} ms, {p.get('overlatency')} over the bound, "
                    f"mean batch {p['mean_batch']:.2f}, {'VALID' if p['valid'] else 'INVALID'}"
                    for p in v["points"]]


def report(row: dict) -> str:
    s, o, pairs = row["single"], row["offline"], row["alone_latency"]["pairs"]
    lines = [f"{row['engine']} (load average {row['load_average']:.1f}): SingleStream p50 "
             f"{s['p50_ms']:.1f} ms, p90 {s['figure']:.1f} ms "
             f"({'VALID' if s['valid'] else 'INVALID'}); alone p90 {row['alone_latency']['p90_ms']:.1f} ms "
             f"[{row['alone_latency']['how']}]: {s['figure'] / row['alone_latency']['p90_ms'] - 1:+.1%} "
             f"(medians of {len(pairs)} pairs taken in turns; the pairs' median ratio "
             f"{statistics.median(a / b for a, b in pairs) - 1:+.1%}; LoadGen / alone ms: "
             + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in pairs) + ")",
             f"  Offline {o['figure']:.1f} tiles/s ({'VALID' if o['valid'] else 'INVALID'}, batches "
             f"{o['batch_histogram']}); alone {row['alone_throughput']['tiles_per_s']:.1f} tiles/s "
             f"[{row['alone_throughput']['how']}]: ratio "
             f"{o['figure'] / row['alone_throughput']['tiles_per_s']:.2f} (goal >= 0.9)"]
    for v in (row["server"], row["server_one_worker"]):
        if v:
            lines += server_lines(v, o["figure"], row["bound_ms"], row["ceiling"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--search-seconds", type=float, default=150.0)
    parser.add_argument("--min-duration-ms", type=int, default=10_000)
    parser.add_argument("--runtime-seconds", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=3,
                        help="SingleStream and the runtime alone at batch 1, this many times in turns "
                             "(medians compared)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--one-worker", action="store_true",
                        help="also search Server with one batcher worker (the batcher before workers)")
    args = parser.parse_args()
    from segbench.engines.registry import available_engines

    work = args.workdir or Path(tempfile.mkdtemp(prefix="segbench-scenarios-"))
    work.mkdir(parents=True, exist_ok=True)
    tiles = work / "tiles.npy"
    rng = np.random.default_rng(0)
    np.save(tiles, rng.uniform(0, 255, (TILES, 3, args.tile, args.tile)).astype(np.float32))
    available, rows = set(available_engines()), []
    for name in args.engines.split(","):
        if name not in available:
            print(f"{name}: skipped, not available here")
            continue
        artifact = build_engine(work, name, args.tile)
        try:
            rows.append(measure(name, artifact, tiles, work / "out", args))
        except SegbenchError as exc:  # one engine's failure is reported; the others still run
            print(f"{name}: failed: {exc}", flush=True)
            continue
        print(report(rows[-1]), flush=True)
    (work / "bench_scenarios.json").write_text(json.dumps(rows, indent=1))
    print(f"logs and figures in {work}")


if __name__ == "__main__":
    main()
