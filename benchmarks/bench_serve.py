"""A bounded load test of ``segbench serve`` on loopback: one server process, a fixed number of
concurrent asyncio clients asking for label tiles at the scene's model zooms for a fixed time.

Reports model pixels per second served (the windows the engine ran, from ``/metrics``), tiles per
second, p50/p99 latency, failed requests, the server's RSS growth after warm-up, and what the load
client itself cost (CPU seconds per second). The reference is the same engine driven through the
same dynamic batcher in this process with every tile submitted at once (the batcher's Offline
pixels/s, the ceiling of the Server figure); goal: served >= 0.8 of it. ``--loadgen SECONDS`` also
runs the bench's LoadGen Server search for the engine (the 'loadgen' extra) and compares with it.

    python benchmarks/bench_serve.py [--engine ARTIFACT] [--scene SCENE.tif] [--clients 4] [--seconds 20]
        [--loadgen 60]

Without ``--engine`` a tiny two-layer conv net (tests/conftest.py) at ``--tile`` is built; without
``--scene`` a 2048 x 2048 synthetic scene of coloured blocks is written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def default_engine(folder: Path, tile: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from segbench.engines.registry import build
    from tests.conftest import make_spec, tiny_conv_onnx

    spec = make_spec(bands=3, classes=6, tile=tile)
    return build(tiny_conv_onnx(folder / "tiny.onnx", spec), "ort-fp32", folder)


def default_scene(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import blob_scene

    return blob_scene(folder / "scene.tif", size=2048, blob=64)


def batcher_offline(engine_path: Path, batch: int, seconds: float) -> float:
    """Pixels/s of the engine through the dynamic batcher, every tile queued at once."""
    from segbench.batcher import DynamicBatcher
    from segbench.engines.registry import load

    with load(engine_path, mode="throughput", batch=batch) as engine:
        spec = engine.spec
        tiles = np.random.default_rng(0).uniform(0, 255, (64, spec.num_bands, spec.tile, spec.tile))
        tiles = tiles.astype(np.float32)
        with DynamicBatcher(engine, max_batch=batch) as batcher:
            [f.result() for f in batcher.submit_many(list(tiles[:batch]))]  # warm up
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                [f.result() for f in batcher.submit_many(list(tiles))]
                done += len(tiles)
            return done * spec.tile ** 2 / (time.perf_counter() - start)


def loadgen_server(engine_path: Path, folder: Path, search_seconds: float) -> dict:
    """The bench's Server figure for the engine (LoadGen through the same batcher), in pixels/s: the
    highest valid QPS (one tile per query) under a p99 bound of 10x its SingleStream p50."""
    from segbench.bench.scenarios import ScenarioSettings, loadgen_dir, run_scenario
    from segbench.spec import ModelSpec

    spec = ModelSpec.load(engine_path)
    tiles = np.random.default_rng(0).uniform(0, 255, (64, spec.num_bands, spec.tile, spec.tile))
    tiles = tiles.astype(np.float32)
    short = {"min_duration_ms": 5000}
    single = run_scenario(engine_path, tiles, ScenarioSettings.default("single-stream", **short),
                          loadgen_dir(folder, "e", "single-stream"))
    offline = run_scenario(engine_path, tiles, ScenarioSettings.default("offline", **short),
                           loadgen_dir(folder, "e", "offline"))
    bound = 10 * single.p50_ms
    server = run_scenario(engine_path, tiles, ScenarioSettings.default(
        "server", latency_bound_ms=bound, search_seconds=search_seconds, capacity_qps=offline.figure),
        loadgen_dir(folder, "e", "server"))
    return {"loadgen_server_mpx_per_s": (server.figure or 0.0) * spec.tile ** 2 / 1e6,
            "loadgen_bound_ms": bound, "loadgen_server_note": server.note,
            "loadgen_offline_mpx_per_s": offline.figure * spec.tile ** 2 / 1e6}


def start_server(engine: Path, root: Path, jobs: Path, batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "segbench.cli", "serve", str(engine), "--scenes", str(root),
            "--port", str(port), "--jobs", str(jobs), "--batch", str(batch),
            "--tile-cache", "0"]  # every request runs the model: the figure is the engine's work
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(client, proc, limit: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            await asyncio.sleep(0.2)
    raise SystemExit("the server did not start")


def model_pixels(metrics: str) -> int:
    match = re.search(r"^segbench_model_pixels_total (\d+)", metrics, re.M)
    return int(match.group(1)) if match else 0


async def load(client, urls: list[str], clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` loops asking for random tiles for ``seconds``: latencies (s) and failures."""
    latencies: list[float] = []
    failed = 0
    stop = time.monotonic() + seconds
    rng = random.Random(0)

    async def one() -> None:
        nonlocal failed
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                ok = (await client.get(rng.choice(urls))).status_code == 200
            except Exception:  # noqa: BLE001  (counted, the load goes on)
                ok = False
            latencies.append(time.perf_counter() - t0)
            failed += not ok

    await asyncio.gather(*(one() for _ in range(clients)))
    return latencies, failed


async def measure(url: str, proc, clients: int, seconds: float, warmup: float) -> dict:
    import httpx
    import morecantile
    import psutil

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        await wait_ready(c, proc)
        scene = (await c.get("/scenes")).json()[0]
        tms = morecantile.tms.get("WebMercatorQuad")
        zooms = [scene["maxzoom"] - 3, scene["maxzoom"] - 2]  # the native zoom and one finer
        urls = [f"/tiles/{scene['id']}/{t.z}/{t.x}/{t.y}.png" for t in tms.tiles(*scene["bounds"], zooms)]
        await load(c, urls, clients, warmup)
        server = psutil.Process(proc.pid)
        rss0, px0 = server.memory_info().rss, model_pixels((await c.get("/metrics")).text)
        cpu0, t0 = time.process_time(), time.perf_counter()
        trend: list[float] = []

        async def sample() -> None:  # the server's RSS every tenth of the run, to see it level off
            while True:
                await asyncio.sleep(seconds / 10)
                trend.append(round(server.memory_info().rss / 2**20, 1))

        sampler = asyncio.create_task(sample())
        latencies, failed = await load(c, urls, clients, seconds)
        sampler.cancel()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        px1, rss1 = model_pixels((await c.get("/metrics")).text), server.memory_info().rss
    q = statistics.quantiles(latencies, n=100)
    return {"clients": clients, "seconds": round(wall, 1), "tiles": len(latencies), "failed": failed,
            "tiles_per_s": len(latencies) / wall, "model_mpx_per_s": (px1 - px0) / wall / 1e6,
            "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "rss_growth_pct": 100 * (rss1 / rss0 - 1),
            "rss_mb": rss1 / 2**20, "rss_trend_mb": trend, "client_cpu_per_s": cpu / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", type=Path)
    p.add_argument("--scene", type=Path)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--loadgen", type=float, default=0.0, metavar="SECONDS",
                   help="also the bench's LoadGen Server figure, its search given this many seconds")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine = args.engine or default_engine(folder, args.tile)
        root = folder / "root"
        root.mkdir()
        if args.scene:  # a copy: the server follows no symlink out of its roots
            shutil.copy(args.scene, root / args.scene.name)
        else:
            default_scene(root)
        offline = batcher_offline(engine, args.batch, min(args.seconds, 10.0))
        server = loadgen_server(engine, folder / "loadgen", args.loadgen) if args.loadgen else {}
        proc, url = start_server(engine, root, folder / "jobs", args.batch)
        try:
            row = asyncio.run(measure(url, proc, args.clients, args.seconds, args.warmup))
        finally:
            proc.terminate()
            proc.wait(30)
    row["batcher_offline_mpx_per_s"] = offline / 1e6
    row["ratio_to_offline"] = row["model_mpx_per_s"] * 1e6 / offline
    row |= server
    if server.get("loadgen_server_mpx_per_s"):
        row["ratio_to_loadgen_server"] = row["model_mpx_per_s"] / server["loadgen_server_mpx_per_s"]
    print(json.dumps(row, indent=1))
    print(f"served {row['model_mpx_per_s']:.2f} model MP/s ({row['ratio_to_offline']:.2f} of the batcher's "
          f"offline {row['batcher_offline_mpx_per_s']:.2f}), {row['tiles_per_s']:.1f} tiles/s, p50 "
          f"{row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, {row['failed']} failed, RSS "
          f"{row['rss_growth_pct']:+.1f}% ({row['rss_mb']:.0f} MB), load client "
          f"{row['client_cpu_per_s']:.2f} CPU s/s")
    if server and "ratio_to_loadgen_server" not in row:
        print(f"the bench's LoadGen Server search found no figure: {server['loadgen_server_note']}")
    if "ratio_to_loadgen_server" in row:
        print(f"the bench's LoadGen Server figure: {row['loadgen_server_mpx_per_s']:.2f} MP/s at p99 <= "
              f"{row['loadgen_bound_ms']:.0f} ms; served/Server {row['ratio_to_loadgen_server']:.2f}")


if __name__ == "__main__":
    main()
