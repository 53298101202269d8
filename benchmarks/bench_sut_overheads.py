"""What the LoadGen system under test pays beside the engine, in one run (SegFormer-B0 at 256, untrained):

- the labels of a batch of 8 tiles (6 classes): numpy's ``argmax(1)`` against
  :func:`segbench.tiler.accumulate.tile_labels` (the native argmax), which the
  dynamic batcher's worker runs on every batch;
- torch-fp32 at batch 1 called from a second thread (the batcher's worker) after
  five calls in the first (the warm-up): the bare ``torch.export`` module, the
  same with no call in the first thread, and the segbench engine (which runs
  every CPU call on a thread of its own). Each in a fresh process, in turns
  (``--rounds``), medians of the per-call p50.

    python benchmarks/bench_sut_overheads.py [--workdir DIR] [--rounds 3] [--calls 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from segbench.bench.memory import run_in_child

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scenarios import build_engine  # noqa: E402  (the same engines as bench_scenarios)

TILE = 256


def labels_ms(repeats: int = 20) -> dict[str, float]:
    """Median ms of numpy's argmax and of tile_labels on 8 tiles of 6 classes' logits."""
    from segbench.tiler.accumulate import tile_labels

    logits = np.random.default_rng(0).normal(size=(8, 6, TILE, TILE)).astype(np.float32)
    out = {}
    for name, fn in (("numpy argmax(1)", lambda: logits.argmax(1).astype(np.uint8)),
                     ("tile_labels", lambda: tile_labels(logits))):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1e3
    return out


def second_thread_ms(artifact: str, how: str, calls: int) -> float:
    """Child process: the p50 ms of ``calls`` batch-1 calls from a second thread, after five calls
    in this one (``how``: "module", "module, none first" or "engine")."""
    import torch

    x = np.random.default_rng(0).uniform(0, 255, (1, 3, TILE, TILE)).astype(np.float32)
    if how == "engine":
        from segbench.engines.registry import load

        engine = load(artifact)
        run = engine.infer
    else:
        module = torch.export.load(artifact).module()

        def run(tiles):
            with torch.inference_mode():
                return module(torch.from_numpy(tiles))
    if how != "module, none first":
        for _ in range(5):
            run(x)
    times: list[float] = []

    def loop() -> None:
        run(x)
        for _ in range(calls):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)

    worker = threading.Thread(target=loop)
    worker.start()
    worker.join()
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    for name, ms in labels_ms().items():
        print(f"labels of 8 tiles, 6 classes at {TILE}: {name} {ms:.2f} ms")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segbench-sut-"))
    work.mkdir(parents=True, exist_ok=True)
    artifact = str(build_engine(work, "torch-fp32", TILE))
    ways = ("module", "module, none first", "engine")
    runs: dict[str, list[float]] = {how: [] for how in ways}
    for _ in range(args.rounds):
        for how in ways:
            runs[how].append(run_in_child(second_thread_ms, artifact, how, args.calls))
    for how in ways:
        print(f"torch-fp32 batch 1 from a second thread, {how}: p50 {statistics.median(runs[how]):.1f} ms "
              f"(rounds: {', '.join(f'{v:.1f}' for v in runs[how])})")


if __name__ == "__main__":
    main()
