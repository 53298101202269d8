"""ONNX Runtime session options: peak memory and ms per batch for each, each in a fresh process.

The engine's defaults (segbench.engines.onnxruntime.SESSION_OPTIONS) come
from this measurement. Every option set runs in its own child process, so
each peak (the kernel's VmHWM) is that session's alone: import, session
creation, one warm-up run and ``--runs`` timed runs on the same batch.
Option sets run interleaved ``--repeat`` times; the table shows the median
time and the highest peak over repeats. ``streams`` (not a session option)
runs that many ``session.run`` calls at once from threads, each with
``intra_op_num_threads`` threads: OpenVINO's throughput streams, done by hand
(ms per batch is then the wall time over all batches).

    .venv/bin/python benchmarks/bench_ort_options.py                  # SegFormer-B0, 256, batch 4
    .venv/bin/python benchmarks/bench_ort_options.py --tile 512 --runs 5
    .venv/bin/python benchmarks/bench_ort_options.py --model model.onnx --batch 4

Without ``--model`` an untrained catalogue network is exported first (the
``train`` extra). Random weights do not change the memory or the time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segbench.engines.onnxruntime import SESSION_OPTIONS

OPTION_SETS = {
    "segbench default": dict(SESSION_OPTIONS),
    "mem pattern on (ORT's default)": {**SESSION_OPTIONS, "enable_mem_pattern": True},
    "arena off": {**SESSION_OPTIONS, "enable_mem_pattern": False, "enable_cpu_mem_arena": False},
    "mem pattern on, arena off": {**SESSION_OPTIONS, "enable_mem_pattern": True,
                                  "enable_cpu_mem_arena": False},
    "1 intra-op thread": {**SESSION_OPTIONS, "intra_op_num_threads": 1},
    "2 streams x 1 thread": {**SESSION_OPTIONS, "intra_op_num_threads": 1, "streams": 2},
}


def measure(model: Path, options: dict, batch: int, runs: int) -> dict:
    """Session with ``options`` on ``model``: peak RSS (bytes) and ms per batch. Run in a fresh process."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from segbench.engines.onnxruntime import create_session
    from segbench.peak import peak_rss_bytes

    options = dict(options)
    streams = options.pop("streams", 1)
    session = create_session(model, "cpu", options)
    inp = session.get_inputs()[0]
    shape = [batch, *inp.shape[1:]]
    tiles = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda _: session.run(None, {inp.name: tiles}), range(streams)))  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            list(pool.map(lambda _: session.run(None, {inp.name: tiles}), range(streams)))
            times.append(1000 * (time.perf_counter() - start) / streams)
    return {"peak_bytes": peak_rss_bytes(), "ms_per_batch": statistics.median(times), "ms": times}


def run_child(model: Path, options: dict, batch: int, runs: int) -> dict:
    """:func:`measure` in a new Python process."""
    cmd = [sys.executable, __file__, "--child", "--model", str(model), "--options", json.dumps(options),
           "--batch", str(batch), "--runs", str(runs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _export(network: str, tile: int, folder: Path) -> Path:
    from segbench.export.onnx import export_model
    from segbench.train.models import untrained_checkpoint

    checkpoint, _ = untrained_checkpoint(network, folder / "model.pth", classes=6, tile=tile)
    path, _, _ = export_model(checkpoint, folder / "model.onnx")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="an exported .onnx (default: export --network)")
    p.add_argument("--network", default="segformer-b0", help="catalogue network to export")
    p.add_argument("--tile", type=int, default=256, help="tile size when exporting (default 256)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--runs", type=int, default=3, help="timed runs per process")
    p.add_argument("--repeat", type=int, default=2, help="processes per option set, interleaved")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, json.loads(args.options), args.batch, args.runs)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or _export(args.network, args.tile, Path(tmp))
        print(f"{model.name if args.model else args.network}, batch {args.batch}, "
              f"{args.runs} runs per process, {args.repeat} processes per option set")
        results: dict[str, list[dict]] = {name: [] for name in OPTION_SETS}
        for _ in range(args.repeat):
            for name, options in OPTION_SETS.items():
                results[name].append(run_child(model, options, args.batch, args.runs))
    print(f"{'options':<32} {'peak MB':>8} {'ms/batch':>9}  (per process)")
    for name, rows in results.items():
        peak = max(r["peak_bytes"] for r in rows) / 2**20
        ms = statistics.median(r["ms_per_batch"] for r in rows)
        each = ", ".join(f"{r['peak_bytes'] / 2**20:.0f} MB {r['ms_per_batch']:.0f} ms" for r in rows)
        print(f"{name:<32} {peak:>8.0f} {ms:>9.1f}  ({each})")
    print("options:", json.dumps(OPTION_SETS["segbench default"]))


if __name__ == "__main__":
    main()
